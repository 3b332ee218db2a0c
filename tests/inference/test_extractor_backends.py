"""Inference backends: torch, onnxruntime and openvino run the same weights with the same preprocessing and
give interchangeable fp32 features; exported files run on their own metadata."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from storekit import TINY_DIM, make_crops, tiny_checkpoint

from mdpr.errors import MdprError

pytest.importorskip("onnxruntime")
BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (extra mdpr[openvino])"))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None):
    base = tmp_path_factory.mktemp("backends")
    return tiny_checkpoint(base / "tiny.pt"), make_crops(base / "crops", 9, size=(70, 30))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_through_a_cached_export(setup, backend: str, mdpr_home: Path) -> None:
    from mdpr import FeatureExtractor

    ckpt, crops = setup
    ref = FeatureExtractor(ckpt, device="cpu", num_workers=0)
    other = FeatureExtractor(ckpt, backend=backend, num_workers=0, flip=True)
    assert (ref.backend, ref.precision) == ("torch", "fp32")
    assert (other.backend, other.precision) == (backend, "fp32")
    assert other.fingerprint == ref.fingerprint and other.preprocessing == ref.preprocessing
    assert other.feature_dim == TINY_DIM
    feats, ok, failed = other.extract_paths(crops)
    ref_flip = FeatureExtractor(ckpt, device="cpu", num_workers=0, flip=True).extract_paths(crops)[0]
    assert ok.tolist() == list(range(len(crops))) and not failed
    assert _cos(feats, ref_flip).min() >= 0.99999
    cached = list((mdpr_home / "cache" / "exports").glob("*.onnx"))
    assert len(cached) == 1
    mtime = os.stat(cached[0]).st_mtime_ns
    FeatureExtractor(ckpt, backend=backend)  # the second extractor reuses the cached export
    assert os.stat(cached[0]).st_mtime_ns == mtime


def test_exported_files_run_with_their_metadata(setup, tmp_path: Path) -> None:
    from mdpr import FeatureExtractor
    from mdpr.export import export_model

    ckpt, crops = setup
    export_model(ckpt, tmp_path / "m.onnx", input_convention="imagenet", batch_sizes=(1,))
    ref = FeatureExtractor(ckpt, device="cpu", num_workers=0)
    onnx = FeatureExtractor(tmp_path / "m.onnx", num_workers=0)  # backend from the suffix
    assert onnx.backend == "onnxruntime" and onnx.model is None and onnx.fingerprint == ref.fingerprint
    assert onnx.config.input.size_test == ref.config.input.size_test
    images = [np.asarray(Image.open(p).convert("RGB")) for p in crops[:3]]
    assert _cos(onnx(images), ref(images)).min() >= 0.99999
    if importlib.util.find_spec("openvino") is not None:
        export_model(ckpt, tmp_path / "m_openvino_model", format="openvino", batch_sizes=(1,))
        ov = FeatureExtractor(tmp_path / "m_openvino_model")
        assert ov.backend == "openvino" and _cos(ov(images), ref(images)).min() >= 0.99999
        ov_onnx = FeatureExtractor(tmp_path / "m.onnx", backend="openvino")  # OpenVINO reads ONNX too
        assert _cos(ov_onnx(images), ref(images)).min() >= 0.99999


def test_stores_of_torch_and_onnxruntime_agree(setup, tmp_path: Path) -> None:
    from mdpr import FeatureExtractor
    from mdpr.inference import items_from_folder
    from mdpr.store import FeatureStore
    from mdpr.workflows.extract import extract_to_store

    ckpt, crops = setup
    items = items_from_folder(crops[0].parents[1])
    stores = {}
    for backend in ("torch", "onnxruntime"):
        extractor = FeatureExtractor(ckpt, backend=backend, device="cpu", num_workers=0)
        extract_to_store(extractor, items, tmp_path / f"{backend}.h5")
        with FeatureStore.open(tmp_path / f"{backend}.h5") as store:
            stores[backend] = (store.read_features(dtype=np.float32), list(store.paths), store.fingerprint)
    (a, pa, fa), (b, pb, fb) = stores["torch"], stores["onnxruntime"]
    assert pa == pb and fa == fb and a.shape == (len(crops), TINY_DIM)
    assert (a * b).sum(1).min() >= 0.99999  # rows are L2-normalised


def test_backend_errors(setup, tmp_path: Path) -> None:
    from mdpr import FeatureExtractor
    from mdpr.export import export_model

    ckpt, _ = setup
    with pytest.raises(MdprError, match="Unknown backend 'tensorrt'"):
        FeatureExtractor(ckpt, backend="tensorrt")
    with pytest.raises(MdprError, match="runs on the CPU"):
        FeatureExtractor(ckpt, backend="onnxruntime", device="cuda")
    export_model(ckpt, tmp_path / "m.onnx", batch_sizes=(1,))
    with pytest.raises(MdprError, match="exported model"):
        FeatureExtractor(tmp_path / "m.onnx", backend="torch")
    with pytest.raises(MdprError, match="does not exist"):
        FeatureExtractor(tmp_path / "missing.onnx")
    export_model(ckpt, tmp_path / "m.torchscript", format="torchscript", batch_sizes=(1,))
    with pytest.raises(MdprError, match="torch.jit.load"):
        FeatureExtractor(tmp_path / "m.torchscript")


def test_precision_rule() -> None:
    from mdpr.inference.backends import check_precision_match

    check_precision_match("fp32", "fp32")
    check_precision_match(None, "fp32")  # stores written before backends were recorded are fp32
    with pytest.raises(MdprError, match="int8 features but this model runs in fp32"):
        check_precision_match("int8", "fp32")
    with pytest.raises(MdprError, match="fp32 features but this model runs in int8"):
        check_precision_match(None, "int8")
    check_precision_match("int8", "fp32", allow_mixed_precision=True)
