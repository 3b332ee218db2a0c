"""A store's rows as Parquet: a round trip gives back every row, path, identity, camera and feature."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from indexkit import make_store

from mdpr.errors import MdprError
from mdpr.search.parquet import export_parquet
from mdpr.store import FeatureStore

pq = pytest.importorskip("pyarrow.parquet")


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5", n=1000, dim=24)
    with FeatureStore.open(path) as store:
        out = export_parquet(store, tmp_path / "pq", rows_per_file=300)
        assert [f.name for f in out.files] == [f"part-{i:05d}.parquet" for i in range(4)] and out.rows == 1000
        table = pq.read_table(tmp_path / "pq")  # the folder reads as one dataset
        assert table.column_names == ["row", "path", "pid", "camid", "feature"]
        table = table.sort_by("row")
        assert table["row"].to_pylist() == list(range(1000))
        assert table["path"].to_pylist() == [str(store.resolve(p)) for p in store.paths]
        feats = np.stack(table["feature"].to_numpy(zero_copy_only=False)).astype(np.float32)
        np.testing.assert_array_equal(feats, store.read_features(np.float32))
        assert table["pid"].to_pylist() == store.pids.tolist()
        assert table["camid"].to_pylist() == store.camids.tolist()
        # a second export replaces the first whole
        again = export_parquet(store, tmp_path / "pq", rows_per_file=600)
        assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["_meta.json", "part-00000.parquet",
                                                                        "part-00001.parquet"]
        assert again.rows == 1000


def test_unknown_ids_are_null_and_other_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mdpr.store import StoreMeta, write_store

    meta = StoreMeta(dim=3, fingerprint="x")
    write_store(tmp_path / "g.h5", meta, np.eye(3), ["a.jpg", "b.jpg", "c.jpg"], pids=[1, -1, 2], camids=[0, 1, -1])
    with FeatureStore.open(tmp_path / "g.h5") as store:
        export_parquet(store, tmp_path / "pq", resolve=False)
        table = pq.read_table(tmp_path / "pq")
        assert table["pid"].to_pylist() == [1, None, 2] and table["camid"].to_pylist() == [0, 1, None]
        assert table["path"].to_pylist() == ["a.jpg", "b.jpg", "c.jpg"]
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(MdprError, match="already holds other files"):
            export_parquet(store, tmp_path / "other")
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(MdprError, match=r'pip install "mdpr\[parquet\]"'):
            export_parquet(store, tmp_path / "pq2")
