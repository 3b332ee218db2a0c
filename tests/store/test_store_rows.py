"""Rows that must not be stored (non-finite features, impossible paths), rows that must round-trip (names that
are not UTF-8), and what a refused or killed writer leaves behind (no empty journal, no lock held by a child)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mdpr.errors import MdprError
from mdpr.store import FeatureStore, StoreMeta, StoreWriter, journal_path_for, path_key, write_store


def _meta(**kw: object) -> StoreMeta:
    base = dict(dim=4, dtype="float32", fingerprint="abc", normalized=False)
    base.update(kw)
    return StoreMeta(**base)  # type: ignore[arg-type]


def _feats(n: int) -> np.ndarray:
    return np.arange(1, 4 * n + 1, dtype=np.float32).reshape(n, 4)


def _with(value: float, rows: tuple = (1, 3), n: int = 5, dtype: object = np.float32) -> np.ndarray:
    feats = _feats(n).astype(dtype)
    for r in rows:
        feats[r, 2] = value
    return feats


NON_FINITE = {
    "nan": (_with(np.nan), {}, "2 of 5 feature rows contain NaN or infinity \\(the first is 1.jpg\\)"),
    "+inf": (_with(np.inf, rows=(4,)), {}, "1 of 5 feature rows contain NaN or infinity \\(the first is 4.jpg\\)"),
    "-inf normalised": (_with(-np.inf, rows=(0,)), {"normalized": True}, "1 of 5 .* \\(the first is 0.jpg\\)"),
    "float64 beyond float32": (_with(1e300, rows=(2,), dtype=np.float64), {}, "1 of 5 .* do not fit float32"),
    "beyond float16": (_with(1e6, rows=(1, 2, 3)), {"dtype": "float16"}, "3 of 5 feature rows do not fit float16"),
    "normalised beyond float32": (_with(1e300, rows=(3,), dtype=np.float64), {"normalized": True}, "do not fit float32"),
}


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_non_finite_rows_are_refused_by_write_store(tmp_path: Path, case: str) -> None:
    feats, meta_kw, expected = NON_FINITE[case]
    with pytest.raises(MdprError, match=expected) as err:
        write_store(tmp_path / "s.h5", _meta(**meta_kw), feats, [f"{i}.jpg" for i in range(len(feats))])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s.h5").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_non_finite_rows_are_refused_by_the_writer_before_the_journal(tmp_path: Path, case: str) -> None:
    feats, meta_kw, expected = NON_FINITE[case]
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta(**meta_kw)) as w:
        w.add(_feats(2) * 1e-3, ["good0.jpg", "good1.jpg"])
        before = journal_path_for(out).read_bytes()
        with pytest.raises(MdprError, match=expected):
            w.add(feats, [f"{i}.jpg" for i in range(len(feats))])
        assert journal_path_for(out).read_bytes() == before and len(w) == 2
    with FeatureStore.open(out) as store:
        assert store.paths == ["good0.jpg", "good1.jpg"] and store.non_finite_rows().size == 0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bad", [[0], [4], [1, 3], [0, 1, 2, 3, 4, 5, 6]])
def test_non_finite_rows_written_by_another_tool_are_reported(tmp_path: Path, dtype: str, bad: list) -> None:
    out = write_store(tmp_path / "s.h5", _meta(dtype=dtype), _feats(7), [f"{i}.jpg" for i in range(7)])
    with h5py.File(out, "r+") as h5:
        data = h5["features"][...]
        for i, r in enumerate(bad):
            data[r, i % 4] = [np.nan, np.inf, -np.inf][i % 3]
        h5["features"][...] = data
    with FeatureStore.open(out) as store:
        assert store.non_finite_rows().tolist() == bad
        assert store.non_finite_rows() is store.non_finite_rows()  # scanned once


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    raw = os.fsencode(root) + b"/caf\xe9_0001_c1s1.jpg"  # a Latin-1 name, as old cameras and zips write them
    name = os.fsdecode(raw)
    out = tmp_path / "s.h5"
    key = path_key(name, root)
    w = StoreWriter(out, _meta(root=str(root)))
    w.add(_feats(2), [key, "plain.jpg"], failed=[(os.fsdecode(b"bad\xff.jpg"), "truncated")])
    w.abort()  # the rows only live in the journal now: the journal must hold them losslessly
    with StoreWriter(out, _meta()) as w:  # recovers the journal and folds it into the store
        assert w.recovered and key in w and w.add(_feats(1), [key]) == 0
    with StoreWriter(out, _meta()) as w:  # and appending afterwards works too
        assert w.add(_feats(1), ["more.jpg"]) == 1
    with FeatureStore.open(out) as store:
        assert store.paths == [key, "plain.jpg", "more.jpg"] and store.paths_at([0]) == [key]
        assert os.fsencode(store.resolve(store.paths[0])) == raw
        assert store.failed == [(os.fsdecode(b"bad\xff.jpg"), "truncated")]
    with h5py.File(out, "r") as h5:  # byte for byte in the file
        assert h5["paths"][0] == b"caf\xe9_0001_c1s1.jpg"


def test_root_that_is_not_utf8_round_trips(tmp_path: Path) -> None:
    root = os.fsdecode(os.fsencode(tmp_path) + b"/d\xe9p\xf4t")
    write_store(tmp_path / "s.h5", _meta(root=root), _feats(1), ["a.jpg"])
    with FeatureStore.open(tmp_path / "s.h5") as store:
        assert store.root == root


@pytest.mark.parametrize("path", ["a\x00b.jpg", "x\ud800.jpg"])
def test_impossible_paths_are_refused_before_the_journal(tmp_path: Path, path: str) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta()) as w:
        before = journal_path_for(out).read_bytes()
        with pytest.raises(MdprError, match="no file name") as err:
            w.add(_feats(1), [path])
        assert "\n" not in str(err.value) and journal_path_for(out).read_bytes() == before
        w.add(_feats(1), ["ok.jpg"])
    with FeatureStore.open(out) as store:
        assert store.paths == ["ok.jpg"]


def test_a_refused_writer_leaves_no_empty_journal(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta()) as w:
        w.add(_feats(2), ["a.jpg", "b.jpg"])
    for refused in (_meta(fingerprint="zzz"), _meta(dim=8), _meta(flip=True)):
        with pytest.raises(MdprError):
            StoreWriter(out, refused)
        assert not journal_path_for(out).exists()
    with FeatureStore.open(out) as store:
        assert not store.has_pending_journal and store.complete
    # An empty or header-only journal never counts as pending rows.
    journal_path_for(out).write_bytes(b"")
    with FeatureStore.open(out) as store:
        assert not store.has_pending_journal


def test_unwritable_store_folder_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MdprError, match="Cannot create the folder .* of the feature store"):
        StoreWriter(tmp_path / "file" / "s.h5", _meta())


_FORKING_WRITER = textwrap.dedent(
    """
    import multiprocessing, sys, time
    import numpy as np
    from mdpr.store import StoreMeta, StoreWriter

    def worker(started):  # like a DataLoader worker: forked while the writer holds the journal
        started.set()
        time.sleep(60)

    w = StoreWriter(sys.argv[1], StoreMeta(dim=4, fingerprint="abc", normalized=False))
    w.add(np.ones((1, 4), np.float32), ["a.jpg"])
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=worker, args=(started,))
    child.start()
    started.wait()
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_killed_writers_orphaned_child_does_not_hold_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    script = tmp_path / "writer.py"
    script.write_text(_FORKING_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the orphan is still alive...
        with StoreWriter(out, _meta()) as w:  # ...and yet the store can be written right away
            assert w.recovered and "a.jpg" in w
    finally:
        with pytest.raises(OSError):
            for _ in range(100):
                os.kill(child, signal.SIGKILL)
                time.sleep(0.05)
        proc.stdout.close()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rows_read_in_any_order_with_repeats_equal_the_file(tmp_path: Path, dtype: str) -> None:
    """Reads of scattered rows (a shortlist being rescored) gather from the mapped file: the bytes they return
    are the file's, whatever byte HDF5 put each chunk at."""
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((200, 24)).astype(dtype)
    path = write_store(tmp_path / "s.h5", _meta(dim=24, dtype=dtype), feats, [f"{i}.jpg" for i in range(200)])
    rows = rng.integers(0, 200, 300)
    rows[:3] = [199, 0, 199]
    with FeatureStore.open(path) as store:
        assert all(part.mapped() is not None for part in store._parts)
        got = store.read_features(rows=rows.tolist())
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, feats[rows])
        np.testing.assert_array_equal(store.read_features(np.float32, rows=rows.tolist()), feats[rows].astype(np.float32))
        assert store.read_features(rows=[]).shape == (0, 24)
