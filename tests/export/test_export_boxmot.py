"""A ``--target boxmot`` export, loaded with plain onnxruntime exactly as boxmot's contract describes, gives
the features of mdpr's PyTorch model fed the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from storekit import REAL_IMAGES, tiny_checkpoint
from trackkit import boxmot_batch, boxmot_crops
from typer.testing import CliRunner

from mdpr.cli import app

ort = pytest.importorskip("onnxruntime")


def _frame_with_people(size=(360, 640)) -> np.ndarray:
    """A BGR frame with the real Market-1501 crops pasted in, over a noisy background."""
    from PIL import Image

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for i, path in enumerate(sorted(REAL_IMAGES.glob("*.jpg"))[:4]):
        crop = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]  # BGR
        y, x = 40 + 30 * i, 20 + 150 * i
        frame[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return frame


def test_boxmot_contract_matches_torch(tmp_path: Path, one_torch_thread: None) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "mdpr_reid.onnx"
    result = CliRunner().invoke(app, ["export", "-w", str(ckpt), "--target", "boxmot", "-o", str(out),
                                      "--batch-sizes", "1,7"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "mdpr_reid.onnx.metadata.json").read_text())

    frame = _frame_with_people()
    boxes = [[20, 40, 84, 168], [170.4, 70.6, 234.2, 198.9], [300, 80, 364, 210], [600, 300, 700, 420]]
    rgb = boxmot_crops(frame, boxes, sidecar["img_size"])

    # boxmot's ONNX backend: first input, first output, then L2 normalisation
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feats = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: boxmot_batch(rgb)})[0]
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)

    from mdpr.model import load_model

    model, _ = load_model(ckpt)
    with torch.inference_mode():
        ref = model(torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cosines = (feats * ref).sum(axis=1)
    assert feats.shape == (4, ref.shape[1]) and cosines.min() >= 0.9999, cosines
