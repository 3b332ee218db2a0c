"""Segmented stores: appends write only the new rows, readers see one logical store, compaction merges."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.errors import MdprError
from mdpr.store import FeatureStore, StoreMeta, StoreWriter, compact, store_bytes, write_store

DIM = 8


@pytest.fixture(autouse=True)
def store_layout() -> str:
    """These tests are about segments themselves: the library's defaults, not both layouts."""
    return "auto"


def _meta() -> StoreMeta:
    return StoreMeta(dim=DIM, fingerprint="abc", normalized=False)


def _rows(start: int, stop: int) -> tuple:
    feats = np.arange(start, stop, dtype=np.float32)[:, None] * np.ones((1, DIM), np.float32)
    return feats, [f"{i:05d}.jpg" for i in range(start, stop)]


def _check(path: Path, n: int) -> None:
    with FeatureStore.open(path) as store:
        assert store.paths == [f"{i:05d}.jpg" for i in range(n)]
        assert store.read_features()[:, 0].tolist() == list(range(n))
        rows = [n - 1, 0, n // 2, n - 1]
        assert store.read_features(rows=rows)[:, 0].tolist() == rows and store.paths_at(rows) == [
            f"{i:05d}.jpg" for i in rows]
        assert np.concatenate([b for _, b in store.scan()])[:, 0].tolist() == list(range(n))
        assert [s for s, _ in store.chunks(chunk_rows=4)] == list(range(0, n, 4))
    with h5py.File(path, "r") as h5:  # any HDF5 reader sees the same one logical store
        assert h5["features"][:, 0].tolist() == list(range(n)) and h5["paths"].shape == (n,)


def test_append_to_a_single_file_store_writes_only_the_new_rows(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta(), layout="single") as w:  # a store as earlier mdpr versions wrote it
        w.add(*_rows(0, 300))
    inode, size = out.stat().st_ino, out.stat().st_size
    with FeatureStore.open(out) as store:
        old_stamp = store.version_stamp
        assert store.layout == "single" and store.extends(300, old_stamp)
    with StoreWriter(out, _meta()) as w:
        assert w.add(*_rows(300, 310)) == 10
    with FeatureStore.open(out) as store:
        assert store.layout == "segments" and len(store) == 310
        segs = store.segments
        assert [(s.start, s.rows) for s in segs] == [(0, 300), (300, 10)]
        assert segs[0].path.stat().st_ino == inode  # the old file itself, linked, not copied
        assert segs[1].path.stat().st_size < min(size, 32 << 10)  # fixed HDF5 overhead + 10 rows
        assert store.version_stamp != old_stamp and store.extends(300, old_stamp) and store.complete
        assert store.extends(310, store.version_stamp) and not store.extends(300, "other")
    assert out.stat().st_size < 64 << 10  # the master holds no rows
    _check(out, 310)


def test_tiered_merges_keep_few_segments(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    stamps = []
    for i in range(40):
        with StoreWriter(out, _meta(), layout="auto") as w:
            w.add(*_rows(i, i + 1))
        with FeatureStore.open(out) as store:
            assert len(store.segments) <= 7
            stamps.append((len(store), store.version_stamp))
    _check(out, 40)
    with FeatureStore.open(out) as store:
        assert all(store.extends(n, s) for n, s in stamps) and len(set(stamps)) == 40
    assert len(list((tmp_path / "s.h5.segments").iterdir())) == len(FeatureStore.open(out).segments)


def test_compact_merges_segments_and_keeps_rows_and_stamp(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    for i in range(0, 30, 3):
        with StoreWriter(out, _meta(), layout="segments") as w:
            w.add(*_rows(i, i + 3))
    with FeatureStore.open(out) as store:
        stamp, before = store.version_stamp, len(store.segments)
    assert before == 10
    done = compact(out)
    assert (done.rows, done.segments_before, done.segments_after) == (30, 10, 1)
    assert done.bytes_after == store_bytes(out) and not (tmp_path / "s.h5.segments").exists()
    with FeatureStore.open(out) as store:
        assert store.layout == "single" and store.version_stamp == stamp and store.complete
    _check(out, 30)
    assert compact(out).segments_before == 1  # nothing to do: still fine


def test_compact_includes_an_interrupted_runs_journal(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta(), layout="segments") as w:
        w.add(*_rows(0, 4))
    w = StoreWriter(out, _meta(), layout="segments")
    w.add(*_rows(4, 9))
    w.checkpoint()
    w.add(*_rows(9, 12))
    w.abort()
    done = compact(out)
    assert done.rows == 12
    with FeatureStore.open(out) as store:
        assert not store.complete and not store.has_pending_journal and store.layout == "single"
    _check(out, 12)


def test_store_compact_command(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    write_store(out, _meta(), *_rows(0, 10), segment_rows=4)
    runner = CliRunner()
    result = runner.invoke(app, ["store", "compact", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert '"segments_before": 3' in result.stdout and '"rows": 10' in result.stdout
    _check(out, 10)
    w = StoreWriter(out, _meta())
    busy = runner.invoke(app, ["store", "compact", str(out)])
    w.close()
    assert busy.exit_code == 2 and "Another process is writing" in busy.stderr
    missing = runner.invoke(app, ["store", "compact", str(tmp_path / "nope.h5")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def _segmented(tmp_path: Path) -> Path:
    return write_store(tmp_path / "s.h5", _meta(), *_rows(0, 9), segment_rows=3)


def test_missing_segment_is_damage_not_zeros(tmp_path: Path) -> None:
    out = _segmented(tmp_path)
    (tmp_path / "s.h5.segments" / "000001.h5").unlink()
    with pytest.raises(MdprError, match="segment file 000001.h5 .* is missing"):
        FeatureStore.open(out)


def test_segment_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    out = _segmented(tmp_path)
    other = write_store(tmp_path / "other.h5", _meta(), *_rows(100, 103))
    seg = tmp_path / "s.h5.segments" / "000001.h5"
    seg.unlink()
    os.symlink(other, seg)
    with pytest.raises(MdprError, match="unsafe: 'features' is a virtual dataset over s.h5.segments/000001.h5"):
        FeatureStore.open(out)


@pytest.mark.parametrize("source", ["../other.h5", "elsewhere/000001.h5", "/tmp/000001.h5"])
def test_master_pointing_outside_its_segments_is_refused(tmp_path: Path, source: str) -> None:
    out = _segmented(tmp_path)
    with h5py.File(out, "r+") as h5:
        layout = h5py.VirtualLayout(shape=(9, DIM), dtype=np.float32)
        layout[0:9] = h5py.VirtualSource(source, "features", shape=(9, DIM))
        del h5["features"]
        h5.create_virtual_dataset("features", layout)
    with pytest.raises(MdprError, match="unsafe"):
        FeatureStore.open(out)


def test_segment_with_other_rows_than_mapped_is_refused(tmp_path: Path) -> None:
    out = _segmented(tmp_path)
    write_store(tmp_path / "s.h5.segments" / "000001.h5", _meta(), *_rows(0, 5))
    with pytest.raises(MdprError, match="segment 000001.h5 holds"):
        FeatureStore.open(out)


def test_orphaned_segments_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    out = _segmented(tmp_path)
    orphan = tmp_path / "s.h5.segments" / "000007.h5"
    orphan.write_bytes(b"left by a killed fold")
    (tmp_path / "s.h5.segments" / ".000008.h5.abc.tmp").write_bytes(b"x")
    with StoreWriter(out, _meta()) as w:
        w.add(*_rows(9, 10))
    assert not orphan.exists() and len(list((tmp_path / "s.h5.segments").iterdir())) == len(
        FeatureStore.open(out).segments)
    _check(out, 10)


def test_compact_writes_features_straight_into_mapped_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction copies the features with plain writes into preallocated chunks: the rows are the same
    bytes, the file stays memory-mappable chunk by chunk, and it is no larger than one written by HDF5."""
    from mdpr.store import hdf5
    from mdpr.store.schema import chunk_rows_for

    written: list = []
    pwrite = hdf5._DirectFeatures._pwrite
    monkeypatch.setattr(hdf5._DirectFeatures, "_pwrite", lambda self, data, offset: (written.append(len(data)),
                                                                                     pwrite(self, data, offset)))

    dim = 64
    chunk = chunk_rows_for(dim, "float16")
    meta = StoreMeta(dim=dim, dtype="float16", fingerprint="abc", normalized=False)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2 * chunk + 37, dim)).astype(np.float16)
    sizes = [chunk // 3, chunk + 5, len(feats) - chunk // 3 - chunk - 5]  # segments that cut chunks anywhere
    out, start = tmp_path / "s.h5", 0
    for size in sizes:
        with StoreWriter(out, meta, layout="segments") as w:
            w.add(feats[start : start + size], [f"{i:05d}.jpg" for i in range(start, start + size)],
                  pids=list(range(start, start + size)), camids=[i % 3 for i in range(start, start + size)])
        start += size
    assert compact(out).segments_before == 3
    assert sum(written) == feats.nbytes  # every feature byte went by the direct path
    with FeatureStore.open(out) as store:
        assert store.layout == "single" and store._chunk_layout() is not None
        assert np.array_equal(store.read_features(dtype=np.float16), feats)
        assert store.paths == [f"{i:05d}.jpg" for i in range(len(feats))]
        assert store.pids.tolist() == list(range(len(feats))) and store.camids.tolist()[:4] == [0, 1, 2, 0]
    with h5py.File(out, "r") as h5:
        assert np.array_equal(h5["features"][:], feats)
    reference = tmp_path / "written.h5"  # the same rows written through HDF5 in one go
    write_store(reference, meta, feats, [f"{i:05d}.jpg" for i in range(len(feats))], pids=list(range(len(feats))),
                camids=[i % 3 for i in range(len(feats))])
    assert out.stat().st_size < 1.1 * reference.stat().st_size
