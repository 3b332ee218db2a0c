"""StoreWriter: journal, atomic folds, recovery after every kind of interruption, no duplicates."""

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
from mdpr.store import FeatureStore, StoreMeta, StoreWriter, journal_path_for


def _meta(**kw: object) -> StoreMeta:
    base = dict(dim=4, dtype="float32", fingerprint="abc", normalized=False)
    base.update(kw)
    return StoreMeta(**base)  # type: ignore[arg-type]


def _rows(start: int, stop: int) -> tuple:
    feats = np.arange(start, stop, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    return feats, [f"{i:05d}.jpg" for i in range(start, stop)]


def _assert_exactly_once(path: Path, n: int) -> None:
    with FeatureStore.open(path) as store:
        paths = store.paths
        assert sorted(paths) == [f"{i:05d}.jpg" for i in range(n)]
        feats = store.read_features()
        # every row still carries its own feature (value = image number)
        assert [int(feats[i, 0]) for i in range(len(paths))] == [int(p[:5]) for p in paths]


def test_add_close_and_dedupe(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta()) as w:
        assert out.exists()  # created empty right away: readable from the start
        assert w.add(*_rows(0, 5)) == 5
        assert w.add(*_rows(3, 8)) == 3  # 3 and 4 are already stored
        feats, paths = _rows(8, 9)
        assert w.add(np.concatenate([feats, feats]), paths * 2) == 1  # duplicates inside one batch
        assert "00004.jpg" in w and len(w) == 9
    assert not journal_path_for(out).exists()
    _assert_exactly_once(out, 9)
    with FeatureStore.open(out) as store:
        assert store.complete


def test_interrupted_writer_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta(), checkpoint_interval=1e9)
    w.add(*_rows(0, 4), failed=[("x.jpg", "broken")])
    w.checkpoint()
    w.add(*_rows(4, 6))
    w.abort()  # as if killed: the last batch only lives in the journal
    with FeatureStore.open(out) as store:
        assert len(store) == 4 and not store.complete and store.has_pending_journal
    w = StoreWriter(out, _meta())
    assert w.recovered and len(w) == 6 and w.add(*_rows(0, 8)) == 2
    w.close()
    _assert_exactly_once(out, 8)
    with FeatureStore.open(out) as store:
        assert store.failed == [("x.jpg", "broken")]


def test_failed_image_that_later_succeeds_leaves_the_list(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta()) as w:
        w.add(np.zeros((0, 4)), [], failed=[("00001.jpg", "truncated")])
    with StoreWriter(out, _meta()) as w:
        w.add(*_rows(1, 2))
    with FeatureStore.open(out) as store:
        assert store.failed == [] and store.paths == ["00001.jpg"]


def test_torn_journal_tail_is_dropped(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta())
    w.add(*_rows(0, 3))
    w.add(*_rows(3, 6))
    w.abort()
    journal = journal_path_for(out)
    size = journal.stat().st_size
    with open(journal, "r+b") as fh:  # cut the last record in half, as a power cut could
        fh.truncate(size - 20)
    w = StoreWriter(out, _meta())
    assert len(w) == 3
    w.add(*_rows(0, 6))
    w.close()
    _assert_exactly_once(out, 6)


def test_garbage_journal_is_ignored(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    journal_path_for(out).write_bytes(b"\x00" * 10)  # header never completed
    with StoreWriter(out, _meta()) as w:
        w.add(*_rows(0, 2))
    _assert_exactly_once(out, 2)


def test_journal_without_its_store_keeps_its_own_description(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta(root="/data/first"))
    w.add(*_rows(0, 3))
    w.abort()
    out.unlink()  # the store is gone, the journal's rows are relative to /data/first
    with StoreWriter(out, _meta(root="/data/second")) as w:
        assert w.meta.root == "/data/first" and len(w) == 3
    with FeatureStore.open(out) as store:
        assert store.root == "/data/first" and len(store) == 3


def test_crash_between_rename_and_journal_reset(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta())
    w.add(*_rows(0, 5))
    w._fold(complete=False)  # the new store is in place but the journal still holds the same rows
    w.abort()
    w = StoreWriter(out, _meta())
    w.add(*_rows(5, 7))
    w.close()
    _assert_exactly_once(out, 7)


def test_mismatched_weights_or_options_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with StoreWriter(out, _meta()) as w:
        w.add(*_rows(0, 2))
    with pytest.raises(MdprError, match="other weights"):
        StoreWriter(out, _meta(fingerprint="zzz"))
    with pytest.raises(MdprError, match="flip"):
        StoreWriter(out, _meta(flip=True))
    with pytest.raises(MdprError, match="float32 .no half"):  # library terms; `mdpr extract` says --half
        StoreWriter(out, _meta(dtype="float16"))
    # a stale journal from other weights is refused too (the store itself is gone)
    w = StoreWriter(tmp_path / "t.h5", _meta())
    w.add(*_rows(0, 2))
    w.abort()
    (tmp_path / "t.h5").unlink()
    with pytest.raises(MdprError, match="interrupted extraction"):
        StoreWriter(tmp_path / "t.h5", _meta(fingerprint="zzz"))


def test_second_writer_is_refused_while_first_is_open(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta())
    with pytest.raises(MdprError, match="Another process is writing"):
        StoreWriter(out, _meta())
    w.close()
    StoreWriter(out, _meta()).close()


def test_periodic_checkpoint_grows_geometrically(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    w = StoreWriter(out, _meta(), checkpoint_interval=0.0)
    w.add(*_rows(0, 10))
    assert w.maybe_checkpoint() and w.pending_rows == 0
    w.add(*_rows(10, 12))  # 2 new rows < half of 10 stored: not worth rewriting the file yet
    assert not w.maybe_checkpoint()
    w.add(*_rows(12, 15))
    assert w.maybe_checkpoint()
    w.close()
    _assert_exactly_once(out, 15)


@pytest.mark.parametrize("strike", range(1, 9))
def test_ctrl_c_anywhere_in_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strike: int) -> None:
    """KeyboardInterrupt at the n-th file operation of a checkpoint: clean stop, nothing lost or doubled."""
    out = tmp_path / "s.h5"
    calls = {"n": 0}
    originals = {name: getattr(os, name) for name in ("ftruncate", "pwrite", "fsync", "replace")}

    def wrap(name: str):
        def op(*args: object, **kw: object) -> object:
            calls["n"] += 1
            if calls["n"] == strike:
                raise KeyboardInterrupt
            return originals[name](*args, **kw)

        return op

    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out, _meta()) as w:
            w.add(*_rows(0, 4))
            w.checkpoint()
            w.add(*_rows(4, 7))
            for name in originals:
                monkeypatch.setattr(os, name, wrap(name))
            w.checkpoint()
            raise KeyboardInterrupt  # the strike came too late: interrupt anyway
    monkeypatch.undo()
    _check = FeatureStore.open(out)
    _check.close()
    with StoreWriter(out, _meta()) as w:
        w.add(*_rows(0, 9))
    _assert_exactly_once(out, 9)


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from mdpr.store import StoreMeta, StoreWriter
    out, n, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    w = StoreWriter(out, StoreMeta(dim=4, fingerprint="abc", normalized=False), checkpoint_interval=0.0,
                    layout=layout)
    for i in range(n):
        name = f"{i:05d}.jpg"
        if name in w:
            continue
        w.add(np.full((1, 4), i, np.float32), [name])
        w.maybe_checkpoint()
        print(i, flush=True)
    w.close()
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts(tmp_path: Path, store_layout: str) -> None:
    """Really kill a writing process (journal appends and atomic folds interleaved), several times."""
    out = tmp_path / "s.h5"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER_SCRIPT)
    n = 400
    rng = np.random.default_rng(1)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(n), store_layout], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        target = int(rng.integers(5, 40))
        seen = 0
        for line in proc.stdout:
            seen += 1
            if line.strip() == "done" or seen >= target:
                break
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stdout.close()
        # Never unreadable, never a duplicate, even right after a kill.
        with h5py.File(out, "r"):
            pass
        with FeatureStore.open(out) as store:
            assert len(set(store.paths)) == len(store)
    assert kills >= 3
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(script), str(out), str(n), store_layout], check=True, capture_output=True, timeout=120)
    assert time.monotonic() - t0 < 120
    _assert_exactly_once(out, n)
