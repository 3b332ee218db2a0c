"""`mdpr export`: ONNX with a dynamic batch, checked against PyTorch on several batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from storekit import TINY_DIM, tiny_checkpoint
from typer.testing import CliRunner

from mdpr.cli import app

ort = pytest.importorskip("onnxruntime")
runner = CliRunner()


def test_export_parity_on_batch_sizes_1_7_32(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "tiny.onnx"
    result = runner.invoke(app, ["export", "--weights", str(ckpt), "--onnx", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert set(report["max_abs_diff"]) == {"1", "7", "32"}
    assert all(v < 1e-3 for v in report["max_abs_diff"].values())
    assert report["feature_dim"] == TINY_DIM

    # independent check: the file really has a dynamic batch and matches the PyTorch model
    from mdpr.model import load_model

    model, _ = load_model(ckpt)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 64, 32) * 255
    with torch.inference_mode():
        ref = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (5, TINY_DIM)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_export_table_output(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    result = runner.invoke(app, ["export", "-w", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--batch-sizes", "2"])
    assert result.exit_code == 0, result.output
    assert "ONNX parity" in result.stdout and "max |onnx - torch|" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "missing.pt", "--onnx", "m.onnx"], "does not exist"),
        (["--weights", "CKPT", "--onnx", "m.onnx", "--batch-sizes", "0,x"], "--batch-sizes"),
    ],
)
def test_export_bad_input(tmp_path: Path, args: list, message: str) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    args = [str(ckpt) if a == "CKPT" else (str(tmp_path / a) if a.endswith((".pt", ".onnx")) else a) for a in args]
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
