"""``mdpr index build|update|info`` and ``mdpr store export --output`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from indexkit import clustered, make_store
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.store import StoreMeta, StoreWriter

pytest.importorskip("faiss")
runner = CliRunner()


def test_index_build_info_update(tmp_path: Path) -> None:
    store = make_store(tmp_path / "g.h5", n=1500)
    result = runner.invoke(app, ["index", "build", "--gallery", str(store), "--kind", "ivfpq", "--nlist", "16",
                                 "--m", "8", "--nbits", "4", "--recall", "0.9", "--shards", "2", "--json"])
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["kind"] == "ivfpq" and built["shards"] == 2 and built["recall"]["at_10"] >= 0.9
    assert built["settings"]["nprobe"] >= 1 and built["params"] == {"nlist": 16, "m": 8, "nbits": 4}
    info = runner.invoke(app, ["index", "info", str(store), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["state"] == "fresh"
    table = runner.invoke(app, ["index", "info", str(store)])
    assert "IVF-PQ" in table.stdout and "recall" in table.stdout and "up to date" in table.stdout
    meta = StoreMeta(dim=32, dtype="float16", fingerprint="f" * 16, normalized=True)
    with StoreWriter(store, meta) as writer:
        writer.add(clustered(100, 32, seed=4), [f"n{i}.jpg" for i in range(100)])
    info = json.loads(runner.invoke(app, ["index", "info", str(store), "--json"]).stdout)
    assert info["state"] == "appended" and "mdpr index update" in info["note"]
    updated = runner.invoke(app, ["index", "update", str(store), "--json"])
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["rows"] == 1600 and json.loads(updated.stdout)["updated"] is True


def test_index_build_auto_and_bad_settings(tmp_path: Path) -> None:
    store = make_store(tmp_path / "g.h5", n=500)
    result = runner.invoke(app, ["index", "build", "--gallery", str(store)])
    assert result.exit_code == 0 and "No index written" in result.stdout and "no index is needed" in result.stdout
    result = runner.invoke(app, ["index", "build", "--gallery", str(store), "--kind", "ivfpq", "--m", "5"])
    assert result.exit_code == 2 and "--m 5 (PQ sub-vectors) must divide the feature size 32" in result.output
    result = runner.invoke(app, ["index", "build", "--gallery", str(store), "--kind", "ivfpq", "--nlist", "999"])
    assert result.exit_code == 2 and "--nlist 999 must be between 1 and the store's 500 rows" in result.output
    none = runner.invoke(app, ["index", "info", str(store), "--json"])
    assert json.loads(none.stdout)["state"] == "none"


def test_store_export_parquet(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    store = make_store(tmp_path / "g.h5", n=300, dim=16)
    result = runner.invoke(app, ["store", "export", str(store), "-o", str(tmp_path / "pq"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 300
    table = pq.read_table(tmp_path / "pq")
    assert table.num_rows == 300 and np.stack(table["feature"].to_numpy(zero_copy_only=False)).shape == (300, 16)
    old_name = runner.invoke(app, ["store", "export", str(store), "--parquet", str(tmp_path / "old"), "--json"])
    assert old_name.exit_code == 0 and json.loads(old_name.stdout)["rows"] == 300  # hidden alias for one release
    missing = runner.invoke(app, ["store", "export", str(store)])
    assert missing.exit_code == 2 and "--output DIR" in missing.stderr
