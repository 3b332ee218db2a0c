"""Helpers for the extract / query / store tests: a tiny checkpoint and folders of tiny crops."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

#: A tiny MDPR (ResNet-18, no IBN, 16-d embeddings -> 144-d features) on 64x32 crops.
TINY = [
    "model.depth=18",
    "model.ibn=false",
    "model.embedding_dim=16",
    "input.size_train=[64,32]",
    "input.size_test=[64,32]",
]
TINY_DIM = 144
REAL_IMAGES = Path(__file__).parent / "data" / "real_images"


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from mdpr.config import load_config
    from mdpr.model import build_model, save_checkpoint

    cfg = load_config(None, TINY)
    torch.manual_seed(seed)
    model = build_model(cfg)
    return save_checkpoint(path, model.eval(), cfg)


def make_crops(folder: Path, n: int, seed: int = 0, size: tuple = (48, 24)) -> List[Path]:
    """``n`` small random crops with Market-style names (pid = i % 7 + 1, camera = i % 3 + 1), in subfolders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pid, cam = i % 7 + 1, i % 3 + 1
        path = folder / f"cam{cam}" / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths
