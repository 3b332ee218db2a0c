"""The HDF5 layout of a feature store: what `docs/feature-store.md` promises, read back with plain h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mdpr import __version__
from mdpr.errors import MdprError
from mdpr.store import (
    SCHEMA_VERSION,
    STORE_FORMAT,
    FeatureStore,
    StoreMeta,
    check_same_weights,
    path_key,
    write_store,
)


def _meta(tmp_path: Path, **kw: object) -> StoreMeta:
    base = dict(
        dim=12,
        dtype="float32",
        fingerprint="f" * 64,
        normalized=True,
        flip=True,
        model_config={"model": {"depth": 18}},
        preprocessing={"size": [64, 32], "interpolation": "bicubic", "channel_order": "RGB"},
        root=str(tmp_path),
    )
    base.update(kw)
    return StoreMeta(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path: Path, dtype: str, store_layout: str) -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((7, 12)).astype(np.float32)
    paths = [path_key(tmp_path / "cam1" / f"{i:04d}_c1s1_000001_01.jpg", tmp_path) for i in range(7)]
    out = write_store(tmp_path / "s.h5", _meta(tmp_path, dtype=dtype), feats, paths, pids=range(7),
                      camids=[0, 1, 2, 3, 4, 5, -1], failed=[("bad.jpg", "cannot identify image file")])

    with FeatureStore.open(out) as store:
        assert len(store) == 7 and store.dim == 12 and store.dtype == np.dtype(dtype)
        assert store.paths == paths and paths[0] == "cam1/0000_c1s1_000001_01.jpg"
        assert store.resolve(paths[0]) == tmp_path / "cam1" / "0000_c1s1_000001_01.jpg"
        assert store.pids.tolist() == list(range(7)) and store.camids.tolist() == [0, 1, 2, 3, 4, 5, -1]
        assert store.fingerprint == "f" * 64 and store.normalized and store.flip and store.complete
        assert store.model_config == {"model": {"depth": 18}}
        assert store.preprocessing["size"] == [64, 32]
        assert store.failed == [("bad.jpg", "cannot identify image file")]
        assert store.schema_version == SCHEMA_VERSION and store.mdpr_version == __version__
        expected = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        tol = 1e-3 if dtype == "float16" else 1e-6
        np.testing.assert_allclose(store.read_features(np.float32), expected, atol=tol)
        np.testing.assert_allclose(np.concatenate(list(store.features(chunk_rows=3))), expected, atol=tol)
        np.testing.assert_allclose(np.concatenate([b for _, b in store.scan()]).astype(np.float32), expected, atol=tol)
        assert store.paths_at([5, 1, 5]) == [paths[5], paths[1], paths[5]]
        np.testing.assert_allclose(store.read_features(np.float32, rows=[4, 2]), expected[[4, 2]], atol=tol)

    # The documented layout, as any HDF5 reader sees it.
    with h5py.File(out, "r") as h5:
        assert set(h5.keys()) == {"features", "paths", "pids", "camids"}
        f = h5["features"]
        assert f.dtype == np.dtype(dtype) and f.shape == (7, 12)
        np.testing.assert_allclose(f[...].astype(np.float32), expected, atol=tol)
        if store_layout == "single":
            assert f.maxshape == (None, 12) and f.chunks is not None and not f.is_virtual
        else:  # virtual datasets over segment files of 3 rows, each of them a single-file store
            assert f.is_virtual and [s.file_name for s in f.virtual_sources()] == [
                f"s.h5.segments/{i:06d}.h5" for i in range(3)]
            with h5py.File(tmp_path / "s.h5.segments" / "000002.h5", "r") as seg:
                assert seg["features"].shape == (1, 12) and seg["features"].chunks is not None
                assert seg.attrs["format"] == STORE_FORMAT
        assert h5["pids"].dtype == np.int32 and h5["camids"].dtype == np.int32
        assert h5["paths"].asstr()[0] == paths[0]
        a = h5.attrs
        assert a["format"] == STORE_FORMAT and a["schema_version"] == SCHEMA_VERSION
        assert a["model_fingerprint"] == "f" * 64 and bool(a["normalized"]) and bool(a["flip"])
        assert json.loads(a["model_config"]) == {"model": {"depth": 18}}
        assert json.loads(a["preprocessing"])["channel_order"] == "RGB"
        assert a["root"] == str(tmp_path) and a["created"] and a["mdpr_version"] == __version__
        assert json.loads(a["failed_images"]) == [{"path": "bad.jpg", "reason": "cannot identify image file"}]


def test_raw_features_are_kept_raw(tmp_path: Path) -> None:
    feats = np.arange(24, dtype=np.float32).reshape(2, 12)
    write_store(tmp_path / "raw.h5", _meta(tmp_path, normalized=False), feats, ["a.jpg", "b.jpg"])
    with FeatureStore.open(tmp_path / "raw.h5") as store:
        assert not store.normalized
        np.testing.assert_array_equal(store.read_features(), feats)
        assert store.pids.tolist() == [-1, -1]


def test_paths_outside_root_are_absolute(tmp_path: Path) -> None:
    root = tmp_path / "gallery"
    assert path_key(root / "a" / "b.jpg", root) == "a/b.jpg"
    assert path_key(tmp_path / "elsewhere.jpg", root) == (tmp_path / "elsewhere.jpg").as_posix()
    assert path_key("x.jpg", None).startswith("/")


def test_large_failed_list_fits(tmp_path: Path) -> None:
    failed = [(f"broken/{i:06d}.jpg", "image file is truncated (12 bytes not processed)") for i in range(5000)]
    write_store(tmp_path / "s.h5", _meta(tmp_path), np.ones((1, 12)), ["a.jpg"], failed=failed)
    with FeatureStore.open(tmp_path / "s.h5") as store:
        assert store.failed == failed


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MdprError, match=r"\(N, 12\)"):
        write_store(tmp_path / "s.h5", _meta(tmp_path), np.ones((2, 5)), ["a", "b"])
    with pytest.raises(MdprError, match="2 feature rows but 1 paths"):
        write_store(tmp_path / "s.h5", _meta(tmp_path), np.ones((2, 12)), ["a"])
    with pytest.raises(MdprError, match="NaN"):
        write_store(tmp_path / "s.h5", _meta(tmp_path), np.full((1, 12), np.nan), ["a"])
    assert not (tmp_path / "s.h5").exists()


def test_open_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(MdprError, match="does not exist"):
        FeatureStore.open(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(MdprError, match="not an HDF5 file"):
        FeatureStore.open(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["features"] = np.zeros((2, 3))
    with pytest.raises(MdprError, match="not an mdpr feature store"):
        FeatureStore.open(tmp_path / "other.h5")
    with pytest.raises(MdprError, match="folder"):
        FeatureStore.open(tmp_path)
    write_store(tmp_path / "new.h5", _meta(tmp_path), np.ones((1, 12)), ["a.jpg"])
    with h5py.File(tmp_path / "new.h5", "r+") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(MdprError, match="upgrade mdpr"):
        FeatureStore.open(tmp_path / "new.h5")


def test_scan_falls_back_for_compressed_files(tmp_path: Path) -> None:
    # A store rewritten by another tool with compression must still be readable and searchable.
    write_store(tmp_path / "s.h5", _meta(tmp_path), np.eye(12)[:5], [f"{i}.jpg" for i in range(5)])
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        data = h5["features"][...]
        del h5["features"]
        h5.create_dataset("features", data=data, chunks=(2, 12), maxshape=(None, 12), compression="gzip")
    with FeatureStore.open(tmp_path / "s.h5") as store:
        assert store._chunk_layout() is None
        np.testing.assert_array_equal(np.concatenate([b for _, b in store.scan()]), data)


def test_check_same_weights_is_one_sentence(tmp_path: Path) -> None:
    write_store(tmp_path / "g.h5", _meta(tmp_path), np.ones((1, 12)), ["a.jpg"])
    with FeatureStore.open(tmp_path / "g.h5") as store:
        check_same_weights(store, "f" * 64, "the weights m.pt")  # the weights that made it: accepted
        with pytest.raises(MdprError) as err:
            check_same_weights(store, "0" * 64, "the weights m.pt")
        message = str(err.value)
        assert message.startswith("The weights m.pt (fingerprint 0000000000000000) are not the ones that made")
        assert str(tmp_path / "g.h5") in message and "ffffffffffffffff" in message and "\n" not in message
        # a store of unknown origin: refused unless the caller accepts unknown fingerprints
        with pytest.raises(MdprError, match="fingerprint none"):
            check_same_weights(store, "", "the weights of the query store q.h5")
        check_same_weights(store, "", "the weights of the query store q.h5", allow_unknown=True)
        with pytest.raises(MdprError, match="not the ones that made the gallery"):
            check_same_weights(store, "0" * 64, "the weights of q.h5", store_label="the gallery", allow_unknown=True)
