"""Helpers for the training tests: a tiny, learnable, registered dataset and a tiny config."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image

#: A tiny MDPR: ResNet-18 without IBN, 64x32 input, 32-d embeddings (see the issue's test budget).
TINY = [
    "model.depth=18",
    "model.ibn=false",
    "model.embedding_dim=32",
    "input.size_train=[64,32]",
    "input.size_test=[64,32]",
    "dataloader.batch_size=8",
    "dataloader.num_instances=2",
    "dataloader.num_workers=0",
    "dataloader.test_batch_size=32",
    "solver.warmup_iters=2",
    "solver.amp=false",
    "train.log_period=1",
]


def _person(rng: np.random.Generator, colors: np.ndarray, cam: int, w: int, h: int) -> Image.Image:
    arr = np.empty((h, w, 3), dtype=np.float32)
    arr[: h // 2] = colors[0]
    arr[h // 2 :] = colors[1]
    arr *= 0.8 + 0.1 * cam  # camera illumination
    arr += rng.normal(0, 12, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(
    root: Path,
    name: str = "tiny",
    train_ids: int = 6,
    test_ids: int = 4,
    per_id: int = 4,
    cams: int = 2,
    size: Sequence[int] = (16, 32),
    seed: int = 0,
    register: bool = True,
):
    """Write images (Market-style names) and register a manifest; returns it."""
    from mdpr.data.records import Record, build_manifest
    from mdpr.data.records import register as register_manifest

    rng = np.random.default_rng(seed)
    w, h = size
    train: List[Record] = []
    query: List[Record] = []
    gallery: List[Record] = []
    for pid in range(1, train_ids + test_ids + 1):
        colors = rng.uniform(0, 255, size=(2, 3))
        for j in range(per_id):
            cam = j % cams
            split = "train" if pid <= train_ids else ("query" if j == 0 else "gallery")
            rel = f"{split}/{pid:04d}_c{cam + 1}s1_{j:06d}_00.png"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            _person(rng, colors, cam, w, h).save(path)
            if split == "train":
                train.append(Record(rel, pid - 1, cam, "train", pid))
            elif split == "query":
                query.append(Record(rel, pid, cam, "query", pid))
            else:
                gallery.append(Record(rel, pid, cam, "gallery", pid))
    manifest = build_manifest(name, "folder", root, train, query, gallery)
    if register:
        register_manifest(manifest)
    return manifest
