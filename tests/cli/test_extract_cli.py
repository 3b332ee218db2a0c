"""`mdpr extract` and the FeatureExtractor Python API on a tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from storekit import REAL_IMAGES, TINY_DIM, make_crops, tiny_checkpoint
from typer.testing import CliRunner

import mdpr
import mdpr.cli.extract  # noqa: F401  (registers the subcommand)
from mdpr.cli import app
from mdpr.config import load_config
from mdpr.errors import MdprError
from mdpr.inference import FeatureExtractor, ImageFileDataset, collate_images
from mdpr.store import FeatureStore

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def extractor(weights: Path) -> FeatureExtractor:
    return FeatureExtractor(weights, device="cpu", num_workers=0, normalize=True)


def _extract(*args: str) -> object:
    return runner.invoke(app, ["extract", "--device", "cpu", *args])


def test_real_market_crops(tmp_path: Path, weights: Path, extractor: FeatureExtractor) -> None:
    images = tmp_path / "real"
    shutil.copytree(REAL_IMAGES, images)
    out = tmp_path / "feats.h5"
    result = _extract("--images", str(images), "--weights", str(weights), "--output", str(out), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "Stored 5 new features" in result.stdout
    with FeatureStore.open(out) as store:
        assert len(store) == 5 and store.dim == TINY_DIM and store.complete and store.normalized
        assert store.paths == sorted(p.name for p in REAL_IMAGES.glob("*.jpg"))
        assert store.pids.tolist() == [22, 27, 32, 48, 65]
        assert store.camids.tolist() == [5, 1, 5, 0, 5]  # c6, c2, c6, c1, c6 -> 0-based
        assert store.root == str(images.resolve())
        assert store.fingerprint == extractor.fingerprint
        assert store.preprocessing == {"size": [64, 32], "interpolation": "bicubic", "channel_order": "RGB",
                                       "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375],
                                       "pixel_range": [0, 255]}
        assert store.model_config["model"]["depth"] == 18
        expected = extractor([store.resolve(p) for p in store.paths])
        np.testing.assert_allclose(store.read_features(), expected, atol=1e-5)
    assert not (tmp_path / "feats.h5.journal").exists()


def test_corrupt_images_are_skipped_and_listed(tmp_path: Path, weights: Path) -> None:
    images = tmp_path / "imgs"
    make_crops(images, 6)
    (images / "cam1" / "0009_c1s1_000100_00.jpg").write_bytes(b"this is not a jpeg")
    good = images / "cam2" / "0002_c2s1_000001_00.jpg"
    data = good.read_bytes()
    (images / "cam2" / "0003_c2s1_000200_00.jpg").write_bytes(data[: len(data) // 3])  # truncated
    out = tmp_path / "feats.h5"
    result = _extract("--images", str(images), "--weights", str(weights), "--output", str(out), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "2 image(s) could not be read" in result.stdout
    assert "cam1/0009_c1s1_000100_00.jpg" in result.stdout and "cam2/0003_c2s1_000200_00.jpg" in result.stdout
    with FeatureStore.open(out) as store:
        assert len(store) == 6
        assert sorted(p for p, _ in store.failed) == ["cam1/0009_c1s1_000100_00.jpg", "cam2/0003_c2s1_000200_00.jpg"]
    # A second identical run has nothing to do (failed images are not retried without --append).
    again = _extract("--images", str(images), "--weights", str(weights), "--output", str(out))
    assert again.exit_code == 0 and "Nothing new to extract" in again.stdout


def test_json_names_the_store_counts_and_failed_images(tmp_path: Path, weights: Path) -> None:
    import json

    images = tmp_path / "imgs"
    make_crops(images, 4)
    (images / "cam1" / "0009_c1s1_000100_00.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "feats.h5"
    result = _extract("--images", str(images), "--weights", str(weights), "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is the one JSON object; progress went to stderr
    assert report["store"] == str(out) and report["rows"] == 4 and report["added"] == 4
    assert report["already_stored"] == 0 and report["dim"] == TINY_DIM
    assert [f["path"] for f in report["failed"]] == ["cam1/0009_c1s1_000100_00.jpg"]
    assert report["failed"][0]["reason"]
    again = json.loads(_extract("--images", str(images), "--weights", str(weights), "--output", str(out),
                                "--json").stdout)
    # the unreadable image is recorded in the store too, so it is skipped with the others, not retried
    assert (again["added"], again["already_stored"], again["rows"], again["failed"]) == (0, 5, 4, [])


def test_append_half_flip_and_refusals(tmp_path: Path, weights: Path) -> None:
    images = tmp_path / "imgs"
    make_crops(images, 5)
    out = tmp_path / "feats.h5"
    base = ["--weights", str(weights), "--output", str(out), "--half", "--flip"]
    assert _extract("--images", str(images), *base).exit_code == 0
    new = images / "cam1" / "0001_c1s1_999999_00.jpg"
    Image.new("RGB", (24, 48), (200, 10, 10)).save(new)

    refused = _extract("--images", str(images), *base)
    assert refused.exit_code == 2 and "--append" in refused.stderr
    appended = _extract("--images", str(images), *base, "--append")
    assert appended.exit_code == 0, appended.output
    assert "Stored 1 new features" in appended.stdout and "5 images were already in the store" in appended.stdout
    with FeatureStore.open(out) as store:
        assert len(store) == 6 and store.dtype == np.float16 and store.flip
        assert "cam1/0001_c1s1_999999_00.jpg" in store.paths

    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    mismatch = _extract("--images", str(images), "--weights", str(other), "--output", str(out), "--half", "--flip",
                        "--append")
    assert mismatch.exit_code == 2 and "other weights" in mismatch.stderr
    no_flip = _extract("--images", str(images), "--weights", str(weights), "--output", str(out), "--half", "--append")
    assert no_flip.exit_code == 2 and "averaging over mirrored images (--flip)" in " ".join(no_flip.stderr.split())
    no_half = _extract("--images", str(images), "--weights", str(weights), "--output", str(out), "--flip", "--append")
    assert no_half.exit_code == 2 and "float16 (--half) features" in " ".join(no_half.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "{tmp}/nowhere"], "does not exist"),
        (["--images", "{tmp}/empty"], "No images"),
        (["--images", "{tmp}/file.txt"], "is not an image file"),
        ([], "exactly one of --images"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path: Path, weights: Path, args: list, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_bytes(b"x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = _extract(*args, "--weights", str(weights), "--output", str(tmp_path / "o.h5"))
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_weights_are_one_sentence(tmp_path: Path) -> None:
    make_crops(tmp_path / "imgs", 1)
    missing = _extract("--images", str(tmp_path / "imgs"), "--weights", str(tmp_path / "nope.pt"), "--output",
                       str(tmp_path / "o.h5"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    junk = _extract("--images", str(tmp_path / "imgs"), "--weights", str(tmp_path / "junk.pt"), "--output",
                    str(tmp_path / "o.h5"))
    assert junk.exit_code == 2 and "Traceback" not in junk.output


def test_python_api_inputs_agree(weights: Path) -> None:
    paths = sorted(REAL_IMAGES.glob("*.jpg"))
    fx = mdpr.FeatureExtractor(weights, device="cpu", num_workers=0)
    from_paths = fx([str(p) for p in paths])
    assert from_paths.shape == (5, TINY_DIM) and from_paths.dtype == np.float32
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(im.convert("RGB")) for im in pil]
    np.testing.assert_allclose(fx(pil), from_paths, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fx(arrays), from_paths, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fx(arrays[0]), from_paths[:1], rtol=1e-4, atol=1e-4)  # a single image -> (1, D)
    feats, ok, failed = fx.extract_paths(paths)
    np.testing.assert_allclose(feats, from_paths, rtol=1e-4, atol=1e-4)
    assert ok.tolist() == [0, 1, 2, 3, 4] and failed == []
    assert fx.feature_dim == TINY_DIM and fx.preprocessing["channel_order"] == "RGB"
    with pytest.raises(MdprError, match="uint8"):
        fx(arrays[0].astype(np.float32))
    with pytest.raises(MdprError, match="RGB"):
        fx(arrays[0][:, :, :2].copy())
    with pytest.raises(MdprError, match="could not be read"):
        fx("/nonexistent/x.jpg")


def test_extract_paths_with_workers_skips_corrupt(tmp_path: Path, weights: Path) -> None:
    paths = make_crops(tmp_path, 9)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    order = paths[:4] + [bad] + paths[4:]
    fx = FeatureExtractor(weights, device="cpu", batch_size=2, num_workers=2, flip=True, normalize=True)
    progress = []
    feats, ok, failed = fx.extract_paths(order, progress=lambda d, t: progress.append((d, t)))
    assert ok.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert failed[0][0] == str(bad) and failed[0][1]
    assert progress[-1] == (10, 10)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    single = FeatureExtractor(weights, device="cpu", batch_size=16, num_workers=0, flip=True, normalize=True)
    np.testing.assert_allclose(single(paths), feats, atol=1e-5)


def test_dataset_is_picklable_and_collate_skips_failures(tmp_path: Path) -> None:
    import pickle

    from mdpr.data.transforms import build_test_transform

    paths = make_crops(tmp_path, 2)
    ds = pickle.loads(pickle.dumps(ImageFileDataset(paths + [tmp_path / "missing.jpg"],
                                                    build_test_transform(load_config(None, []).input))))
    items = [ds[i] for i in range(3)]
    indices, batch, failed = collate_images(items)
    assert indices.tolist() == [0, 1] and batch.shape == (2, 3, 384, 192) and failed[0][0] == 2


def test_from_model_restores_training_mode(weights: Path) -> None:
    from mdpr.model import load_model

    model, config = load_model(weights)
    model.train()
    fx = FeatureExtractor.from_model(model, config, device="cpu", num_workers=0)
    feats = fx(sorted(REAL_IMAGES.glob("*.jpg"))[:2])
    assert feats.shape == (2, TINY_DIM) and model.training
    assert fx.fingerprint == FeatureExtractor(weights, device="cpu").fingerprint
    with torch.no_grad():
        model.stem.conv1.weight.add_(1.0)  # the fingerprint of a model in training follows its weights
    assert fx.fingerprint != FeatureExtractor(weights, device="cpu").fingerprint


def test_dataset_split_uses_the_manifest_labels(tmp_path: Path, weights: Path) -> None:
    prepared = runner.invoke(app, ["prepare", "demo", str(tmp_path / "demo"), "--ids", "4", "--images-per-id", "4",
                                   "--size", "64x32", "--name", "mini"])
    assert prepared.exit_code == 0, prepared.output
    from mdpr.data.records import load_dataset

    manifest = load_dataset("mini")
    out = tmp_path / "query.h5"
    result = _extract("--dataset", "mini", "--split", "query", "--weights", str(weights), "--output", str(out))
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert store.root == str(Path(manifest.root).resolve())
        assert store.paths == [r.path for r in manifest.query]
        assert store.pids.tolist() == [r.pid for r in manifest.query]
        assert store.camids.tolist() == [r.camid for r in manifest.query]
    empty = _extract("--dataset", "nonexistent", "--weights", str(weights), "--output", str(out))
    assert empty.exit_code == 2 and "nonexistent" in empty.stderr


def test_fingerprint_is_cached_per_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mdpr.model.saving as saving_mod

    path = tiny_checkpoint(tmp_path / "w.pt", seed=5)
    first = FeatureExtractor(path, device="cpu").fingerprint

    def no_hashing(state_dict: object, length: int = 16) -> str:
        raise AssertionError("the fingerprint should come from the cache")

    with monkeypatch.context() as m:
        m.setattr(saving_mod, "state_dict_fingerprint", no_hashing)
        assert FeatureExtractor(path, device="cpu").fingerprint == first
    tiny_checkpoint(path, seed=6)  # new weights in the same file: a new entry, a new fingerprint
    second = FeatureExtractor(path, device="cpu")
    assert second.fingerprint != first
    from mdpr.model.saving import state_dict_fingerprint

    assert second.fingerprint == state_dict_fingerprint(second.model.state_dict())


def test_test_and_train_resize_equal_torchvision_and_skip_its_import() -> None:
    import random
    import subprocess
    import sys

    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from mdpr.config import InputConfig
    from mdpr.data.transforms import TestTransform, TrainTransform, pil_resize, to_tensor_255

    img = Image.open(sorted(REAL_IMAGES.glob("*.jpg"))[0]).convert("RGB")
    for name in ("nearest", "bilinear", "bicubic", "lanczos"):
        mode = InterpolationMode(name)
        for size in ((384, 192), (64, 32)):
            ours = np.asarray(pil_resize(img, size, name))
            theirs = np.asarray(TF.resize(img, list(size), interpolation=mode, antialias=True))
            np.testing.assert_array_equal(ours, theirs)
        expected = to_tensor_255(TF.resize(img, [384, 192], interpolation=mode, antialias=True))
        assert torch.equal(TestTransform((384, 192), name)(img), expected)
        plain = InputConfig(size_train=[384, 192], interpolation=name, flip_prob=0.0, padding=0, autoaug_prob=0.0,
                            random_erasing_prob=0.0)
        assert torch.equal(TrainTransform(plain)(img, random.Random(0)), expected)
    # extract / query / train start-up: importing the extraction path or building the training augmentation must
    # not pull in torchvision (+2 s on 2 cores)
    code = ("import sys, mdpr.inference, mdpr.cli.query; from mdpr.config import InputConfig; "
            "from mdpr.data.transforms import build_train_transform; build_train_transform(InputConfig()); "
            "assert 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
