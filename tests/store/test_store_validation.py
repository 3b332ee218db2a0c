"""Opening a malformed or hostile store: one MdprError sentence, never a traceback, never data of another file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from mdpr.errors import MdprError
from mdpr.store import FeatureStore, StoreMeta, write_store


def _good(tmp_path: Path, name: str = "s.h5") -> Path:
    meta = StoreMeta(dim=4, fingerprint="abc", normalized=False, model_config={"a": 1})
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    return write_store(tmp_path / name, meta, feats, ["a.jpg", "b.jpg", "c.jpg"], pids=[1, 2, 3], camids=[0, 1, 2])


def _replace(h5: h5py.File, name: str, value: object) -> None:
    del h5[name]
    h5[name] = value


def _outside_vds(h5: h5py.File, tmp_path: Path) -> None:
    other = _good(tmp_path, "other.h5")
    layout = h5py.VirtualLayout(shape=(3, 4), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(other), "features", shape=(3, 4))
    del h5["features"]
    h5.create_virtual_dataset("features", layout)


def _external_storage(h5: h5py.File, tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    np.full((3, 4), 7, np.float32).tofile(raw)
    del h5["features"]
    h5.create_dataset("features", shape=(3, 4), dtype=np.float32, external=[(str(raw), 0, 48)])


HOSTILE: dict = {
    "1-D features": (lambda h5, t: _replace(h5, "features", np.zeros(3, np.float32)), "shape \\(3,\\), not \\(rows, dim\\)"),
    "0-wide features": (lambda h5, t: _replace(h5, "features", np.zeros((3, 0), np.float32)), "not \\(rows, dim\\)"),
    "float64 features": (lambda h5, t: _replace(h5, "features", np.zeros((3, 4))), "float64 values"),
    "big-endian features": (lambda h5, t: _replace(h5, "features", np.zeros((3, 4), ">f4")), ">f4 values"),
    "features is a group": (lambda h5, t: (h5.__delitem__("features"), h5.create_group("features")), "is a Group"),
    "short pids": (lambda h5, t: _replace(h5, "pids", np.zeros(2, np.int32)), "'pids' has 2 rows but 'features' has 3"),
    "2-D camids": (lambda h5, t: _replace(h5, "camids", np.zeros((3, 2), np.int32)), "'camids' has shape \\(3, 2\\)"),
    "float pids": (lambda h5, t: _replace(h5, "pids", np.zeros(3, np.float32)), "'pids' holds float32 values"),
    "numeric paths": (lambda h5, t: _replace(h5, "paths", np.zeros(3, np.int32)), "'paths' holds int32 values"),
    "array attribute": (lambda h5, t: h5.attrs.__setitem__("normalized", np.array([1, 0, 1])), "'normalized' is an array"),
    "array format": (lambda h5, t: h5.attrs.__setitem__("format", np.array(["a", "b"], dtype=object)), "'format' is an array"),
    "numeric fingerprint": (lambda h5, t: h5.attrs.__setitem__("model_fingerprint", 5), "'model_fingerprint' is a int"),
    "string schema version": (lambda h5, t: h5.attrs.__setitem__("schema_version", "one"), "'schema_version' is the string"),
    "flip is 7": (lambda h5, t: h5.attrs.__setitem__("flip", 7), "'flip' is a int, not true or false"),
    "config is a list": (lambda h5, t: h5.attrs.__setitem__("model_config", "[1, 2]"), "'model_config' holds a list"),
    "config not JSON": (lambda h5, t: h5.attrs.__setitem__("preprocessing", "{oops"), "'preprocessing' is not valid JSON"),
    "failed without path": (lambda h5, t: h5.attrs.__setitem__("failed_images", '[{"reason": "x"}]'), "without a string"),
    "external link": (lambda h5, t: (_good(t, "other.h5"), _replace(h5, "features", h5py.ExternalLink("other.h5", "/features"))),
                      "unsafe: 'features' is an external link to other.h5:/features"),
    "soft link": (lambda h5, t: (h5.move("paths", "hidden"), h5.__setitem__("paths", h5py.SoftLink("/hidden"))),
                  "unsafe: 'paths' is a SoftLink"),
    "virtual dataset outside": (_outside_vds, "unsafe: 'features' is a virtual dataset over"),
    "external raw storage": (_external_storage, "unsafe: the data of 'features' lies in external raw file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_store_is_refused_in_one_sentence(tmp_path: Path, case: str) -> None:
    mutate: Callable[[h5py.File, Path], object]
    mutate, expected = HOSTILE[case]
    path = _good(tmp_path)
    with h5py.File(path, "r+") as h5:
        mutate(h5, tmp_path)
    with pytest.raises(MdprError, match=expected) as err:
        FeatureStore.open(path)
    message = str(err.value)
    assert "\n" not in message and message.endswith(".") and str(path) in message


def test_sound_store_still_opens(tmp_path: Path) -> None:
    path = _good(tmp_path)
    with h5py.File(path, "r+") as h5:  # what other tools may legitimately do: int64 ids, a (1,)-array flag
        _replace(h5, "pids", np.array([1, 2, 3], np.int64))
        h5.attrs["flip"] = np.array([False])
    with FeatureStore.open(path) as store:
        assert store.pids.tolist() == [1, 2, 3] and store.flip is False and store.model_config == {"a": 1}
