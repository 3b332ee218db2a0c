"""`--backend` on extract and query (issue 15, acceptance 2): an ONNX Runtime store equals a torch store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from storekit import REAL_IMAGES, tiny_checkpoint
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.store import FeatureStore

runner = CliRunner()


def test_onnxruntime_and_torch_stores_agree_and_query_across(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    weights = tiny_checkpoint(tmp_path / "tiny.pt")
    stores = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.h5"
        result = runner.invoke(app, ["extract", "--images", str(REAL_IMAGES), "--weights", str(weights), "--output",
                                     str(out), "--backend", backend, "--device", "cpu", "--workers", "0"])
        assert result.exit_code == 0, result.output
        stores[backend] = out
    with FeatureStore.open(stores["torch"]) as a, FeatureStore.open(stores["onnxruntime"]) as b:
        assert a.paths == b.paths and b.meta.backend == "onnxruntime" and b.meta.precision == "fp32"
        fa, fb = a.read_features(dtype=np.float32), b.read_features(dtype=np.float32)
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cos.min() >= 0.99999
    probe = str(sorted(REAL_IMAGES.glob("*.jpg"))[0])
    for store, backend in ((stores["onnxruntime"], "torch"), (stores["torch"], "onnxruntime")):
        result = runner.invoke(app, ["query", probe, "--gallery", str(store), "--weights", str(weights),
                                     "--backend", backend, "--json", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["results"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
