from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import build_market

from mdpr.data import load_dataset
from mdpr.data.datasets import PrepareOptions
from mdpr.data.prepare import prepare_dataset
from mdpr.data.records import (
    STATS_KEYS,
    Manifest,
    Record,
    build_manifest,
    read_manifest,
    register,
    registered_names,
    registry_dir,
)
from mdpr.errors import MdprError


def _manifest(tmp_path: Path, name: str = "toy") -> Manifest:
    return build_manifest(
        name,
        "market1501",
        tmp_path,
        train=[Record("t/a.jpg", 0, 0, "train", 7), Record("t/b.jpg", 1, 2, "train", 11)],
        query=[Record("q/c.jpg", 3, 1, "query", 3)],
        gallery=[Record("g/d.jpg", 3, 0, "gallery", 3), Record("g/e.jpg", 0, 4, "gallery", 0)],
        options={"variant": "x"},
    )


def test_manifest_round_trip_and_stats(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    path = m.save(tmp_path / "m.json")
    back = read_manifest(path)
    assert back.train == m.train and back.query == m.query and back.gallery == m.gallery
    assert back.root == tmp_path.resolve() and back.options == {"variant": "x"} and back.created
    assert back.image_path(back.query[0]) == tmp_path.resolve() / "q/c.jpg"
    assert back.num_train_pids == 2 and back.train_classes() == [7, 11]
    stats = back.stats()
    assert tuple(stats) == STATS_KEYS
    assert stats == {
        "dataset": "market1501",
        "train_ids": 2,
        "train_images": 2,
        "query_ids": 1,
        "query_images": 1,
        "gallery_ids": 2,
        "gallery_images": 2,
        "cameras": 4,  # 0, 1, 2, 4 over all splits
    }
    assert back.split_stats()["gallery"] == {"ids": 2, "images": 2, "cameras": 2}


def test_register_replaces_atomically_and_load_by_name_or_path(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "alias")
    path = register(m)
    assert path.parent == registry_dir() and registered_names() == ["alias"]
    m.query = []
    register(m)
    assert load_dataset("alias").query == []
    assert load_dataset(str(path)).name == "alias"
    assert sorted(p.name for p in registry_dir().iterdir()) == ["alias.json"]  # no temporary files left


def test_unknown_name_lists_registered(tmp_path: Path) -> None:
    register(_manifest(tmp_path, "first"))
    register(_manifest(tmp_path, "second"))
    with pytest.raises(MdprError, match=r"Unknown dataset 'nope'.*first, second"):
        load_dataset("nope")


def test_unknown_name_with_empty_registry() -> None:
    with pytest.raises(MdprError, match=r"not prepared yet; run `mdpr prepare market1501 ROOT`.*No dataset is registered yet"):
        load_dataset("market1501")


def test_bad_names_and_damaged_manifests(tmp_path: Path) -> None:
    with pytest.raises(MdprError, match="not valid"):
        _manifest(tmp_path, "../evil")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MdprError, match="cannot be read"):
        load_dataset(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MdprError, match="not an mdpr dataset manifest"):
        load_dataset(bad)


def test_prepare_api_registers_under_name(tmp_path: Path) -> None:
    build_market(tmp_path)
    result = prepare_dataset("market", tmp_path, name="m2", options=PrepareOptions())
    loaded = load_dataset("m2")
    assert loaded.dataset == "market1501" and loaded.stats() == result.manifest.stats()
    for rec in loaded.records():
        assert loaded.image_path(rec).is_file()
