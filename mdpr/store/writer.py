"""Adding rows to a store crash-safely: :class:`StoreWriter` (journal first, then atomic folds).

:class:`StoreWriter` appends each batch to the store's write-ahead journal (:mod:`mdpr.store.journal`)
and *folds* the journal into the store by writing a complete new file and atomically renaming it over
the old one (at the end, on Ctrl-C, and every ``checkpoint_interval`` seconds when the store has grown
enough to be worth rewriting). Whatever kills the process, the store file is a complete previous
version, the journal holds everything since, and rows are de-duplicated by path when folding, so
re-running continues with every image exactly once.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from mdpr.errors import MdprError
from mdpr.fileio import atomic_copy, describe_os_error, fsync_dir
from mdpr.store.hdf5 import (
    is_temporary_of,
    new_stamp,
    next_segment,
    remove_unreferenced_segments,
    write_file_atomic,
    write_master,
)
from mdpr.store.journal import Journal
from mdpr.store.reader import FeatureStore, Segment
from mdpr.store.schema import PathLike, Rows, StoreMeta, journal_path_for, now, validated_rows
from mdpr.store.validation import segments_dir_for

#: How folds lay rows out: "auto" (new rows go to a new segment, merged with the trailing segments that are
#: not larger, so a store has O(log N) segments and each row is rewritten O(log N) times), "segments" (a new
#: segment per fold, never merged) or "single" (rewrite one whole file per fold, as mdpr did before segments).
LAYOUTS = ("auto", "segments", "single")
DEFAULT_LAYOUT = "auto"


class StoreWriter:
    """Add rows to a store (creating it when missing) so that no crash can lose or duplicate committed rows.

    ``add`` appends to the journal; ``checkpoint`` folds the journal into the store file atomically;
    ``close`` folds and removes the journal. Reopening after an interruption (of any kind) recovers the
    journal. Rows whose path is already stored are skipped, never stored twice. Use as a context
    manager: a normal exit closes with ``complete=True``; Ctrl-C folds what was done (``complete=False``);
    any other exception leaves the journal for the next writer to recover.
    """

    def __init__(
        self,
        path: PathLike,
        meta: StoreMeta,
        *,
        checkpoint_interval: float = 300.0,
        fsync_interval: float = 1.0,
        layout: Optional[str] = None,
    ) -> None:
        self.path = Path(path)
        self.layout = layout or DEFAULT_LAYOUT
        if self.layout not in LAYOUTS:
            raise MdprError(f"StoreWriter layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}.")
        self.checkpoint_interval = float(checkpoint_interval)
        self.fsync_interval = float(fsync_interval)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MdprError(
                f"Cannot create the folder {self.path.parent} of the feature store ({describe_os_error(exc)}); "
                "choose a store path in a writable folder."
            ) from None
        self._journal = self._open_journal()
        try:
            self._open(meta)
        except BaseException:
            # A journal this writer created and never wrote must not stay behind (an empty journal
            # would make the store look interrupted).
            self._journal.close(delete=self._journal.created and not self._journal.records)
            raise

    def _open_journal(self) -> Journal:
        jpath = journal_path_for(self.path)
        for _ in range(5):
            try:
                journal = Journal(jpath)
            except OSError as exc:
                raise MdprError(
                    f"Cannot write the journal {jpath} of the feature store ({describe_os_error(exc)}); choose a "
                    "store path in a writable folder."
                ) from None
            if not journal.lock():
                journal.close(delete=False)
                raise MdprError(
                    f"Another process is writing {self.path} (its journal {jpath.name} is locked); wait for it to "
                    "finish or stop it, then re-run."
                )
            # The previous holder may have deleted the journal between our open and our lock.
            with contextlib.suppress(OSError):
                if os.fstat(journal.fd).st_ino == os.stat(jpath).st_ino:
                    return journal
            journal.close(delete=False)
        raise MdprError(f"Could not lock {jpath}; another process keeps re-creating it.")

    def _open(self, meta: StoreMeta) -> None:
        for stale in self.path.parent.iterdir():  # a fold killed half-way
            if is_temporary_of(stale.name, self.path.name):
                with contextlib.suppress(OSError):
                    stale.unlink()
        # The paths in the store file(s) and in the journal, read lazily: compacting never needs them.
        self._store_keys_: Optional[Set[str]] = set()
        self._journal_keys: Set[str] = set()
        self._keys_: Optional[Set[str]] = None
        self.failed: Dict[str, str] = {}
        self._stamp, self._legacy_stamp = "", ""
        self._history: List[Tuple[int, str]] = []
        self._segments: List[Segment] = []
        self._segmented = False
        if self.path.exists():
            with FeatureStore.open(self.path) as store:
                store.meta.check_compatible(meta, str(self.path))
                # The stored description wins (root, created, config) so resuming never changes it.
                self.meta = store.meta
                self.created = store.created or now()
                self.failed = dict(store.failed)
                self._load_layout(store)
        else:
            self.meta = meta
            self.created = now()
            self.stored_rows = 0
            self.complete = False
        # Segment files the store does not reference were left by a merge or a crash: only the lock holder
        # may remove them.
        remove_unreferenced_segments(self.path, [s.path for s in self._segments] if self._segmented else [])
        journal = self._journal
        journal.scan()
        if journal.header is None:
            journal.reset(self._journal_header())
        else:
            jmeta = StoreMeta.from_json(journal.header["meta"])
            jmeta.check_compatible(self.meta, f"The interrupted extraction in {journal.path}")
            if not self.path.exists():  # its rows' paths are relative to its own root: keep its description
                self.meta = jmeta
                self.created = str(journal.header.get("created") or self.created)
            journal.truncate_tail()
            for rec in journal.records:
                self._journal_keys.update(rec.paths)
                self.failed.update({p: r for p, r in rec.failed})
        if not self.path.exists():
            # Create the (empty) store right away: the file exists and is readable from the start.
            self._fold(complete=False)
        self._last_fold = time.monotonic()

    def _load_layout(self, store: FeatureStore) -> None:
        """Take the store's rows, version and segments as they are on disk."""
        self.stored_rows = len(store)
        self.complete = store.complete
        self._store_keys_, self._keys_ = None, None  # read again when needed
        self._stamp, self._history = store._stamp, store.history
        self._legacy_stamp = store.version_stamp
        self._segmented = store.layout == "segments"
        self._segments = store.segments if len(store) else []

    def _refresh(self) -> None:
        """Re-read the store's layout when a fold was interrupted after the store changed (Ctrl-C anywhere)."""
        if not self.path.exists():
            self.stored_rows, self._segments, self._segmented = 0, [], False
            self._store_keys_, self._keys_ = set(), None
            return
        with FeatureStore.open(self.path) as store:
            same = (store.version_stamp == (self._stamp or self._legacy_stamp) and len(store) == self.stored_rows
                    and (store.layout == "segments") == self._segmented)
            if not same:
                self._load_layout(store)

    @property
    def _store_keys(self) -> Set[str]:
        if self._store_keys_ is None:
            self._store_keys_ = set()
            if self.path.exists():
                with FeatureStore.open(self.path) as store:
                    self._store_keys_.update(store.paths)
        return self._store_keys_

    @property
    def keys(self) -> Set[str]:
        """Every path stored or journaled (rows are never stored twice)."""
        if self._keys_ is None:
            self._keys_ = self._store_keys | self._journal_keys
        return self._keys_

    def _journal_header(self) -> Dict[str, Any]:
        return {"meta": self.meta.to_json(), "created": self.created}

    # -- state
    @property
    def pending_rows(self) -> int:
        """Rows in the journal, not yet folded into the store file."""
        return sum(r.rows for r in self._journal.records)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    @property
    def recovered(self) -> bool:
        """True when the writer picked up rows left by an interrupted run."""
        return bool(self._journal.records)

    # -- adding
    def add(
        self,
        features: Any,
        paths: Sequence[str],
        pids: Optional[Sequence[int]] = None,
        camids: Optional[Sequence[int]] = None,
        failed: Sequence[Tuple[str, str]] = (),
    ) -> int:
        """Journal a batch of rows (and images that failed); return how many rows were new."""
        rows = validated_rows(self.meta, features, list(paths), pids, camids)
        keep = []
        seen: Set[str] = set()
        for i, key in enumerate(rows.paths):
            if key not in self.keys and key not in seen:
                keep.append(i)
                seen.add(key)
        failed = [(str(p), str(r)) for p, r in failed if str(p) not in self.keys and str(p) not in seen]
        if not keep and not failed:
            return 0
        idx = np.asarray(keep, dtype=np.int64)
        info = {
            "paths": [rows.paths[i] for i in keep],
            "pids": rows.pids[idx].tolist(),
            "camids": rows.camids[idx].tolist(),
            "failed": failed,
        }
        self._journal.append(info, rows.features[idx], self.fsync_interval)
        self.keys.update(info["paths"])
        self._journal_keys.update(info["paths"])
        for key in info["paths"]:
            self.failed.pop(key, None)
        self.failed.update(dict(failed))
        return len(keep)

    def maybe_checkpoint(self) -> bool:
        """Fold when ``checkpoint_interval`` has passed and the journal holds at least half the store's rows.

        The second condition keeps the total rewrite cost linear in the final size (geometric growth).
        """
        if time.monotonic() - self._last_fold < self.checkpoint_interval:
            return False
        if self.pending_rows == 0 or self.pending_rows * 2 < self.stored_rows:
            return False
        self.checkpoint()
        return True

    def checkpoint(self, complete: bool = False) -> None:
        """Fold the journal into the store file (atomic rename), then empty the journal."""
        self._journal.sync()
        self._fold(complete)
        self._journal.reset(self._journal_header())

    def close(self, complete: bool = True, interrupted: bool = False) -> None:
        """Fold everything into the store, mark it ``complete`` (or not), remove the journal.

        ``interrupted=True`` (after Ctrl-C, which may have struck anywhere) re-reads the journal from
        disk instead of trusting the in-memory state.
        """
        if self._journal.fd < 0:
            return
        try:
            if interrupted:
                self._journal.scan()
                if self._journal.header is None:  # cut while being reset: its rows are already in the store
                    self._journal.reset(self._journal_header())
                else:
                    self._journal.truncate_tail()
            if self._journal.records or complete != self.complete:
                self._journal.sync()
                self._fold(complete)
        except BaseException:  # e.g. a second Ctrl-C during the fold: the journal must survive
            self._journal.close(delete=False)
            raise
        self._journal.close(delete=True)

    def abort(self) -> None:
        """Stop without folding; the journal stays for the next writer to recover."""
        if self._journal.fd >= 0:
            with contextlib.suppress(OSError):
                self._journal.sync()
            self._journal.close(delete=False)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close(complete=True)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(complete=False, interrupted=True)
        else:
            self.abort()

    # -- folding
    def _journal_rows(self, skip: Set[str]) -> Iterator[Rows]:
        """The journal's rows whose path is not in ``skip`` (which grows with every row yielded)."""
        for rec in self._journal.records:
            info, feats = self._journal.read(rec, self.meta)
            # A crash between the store's rename and the journal reset leaves rows in both places: keep one.
            keep = [i for i, p in enumerate(info["paths"]) if p not in skip]
            if not keep:
                continue
            skip.update(info["paths"][i] for i in keep)
            idx = np.asarray(keep, dtype=np.int64)
            yield Rows(
                features=feats[idx],
                paths=[info["paths"][i] for i in keep],
                pids=np.asarray(info["pids"], dtype=np.int32)[idx],
                camids=np.asarray(info["camids"], dtype=np.int32)[idx],
            )

    def _new_rows(self) -> int:
        seen: Set[str] = set()
        for rec in self._journal.records:
            seen.update(p for p in rec.paths if p not in self._store_keys)
        return len(seen)

    def _fold(self, complete: bool, rewrite: bool = False) -> None:
        """Put the journal's rows into the store: as a new segment (the store's rows stay where they are),
        merged with the trailing segments that are not larger than what is written, or as one new file
        when that merge reaches the first row (or ``rewrite``, or the ``"single"`` layout)."""
        self._refresh()
        failed = [(p, r) for p, r in self.failed.items() if p not in self.keys]
        new = self._new_rows()
        stamp, history = self._stamp, list(self._history)
        if new or not stamp:  # rows are added (or the store had no stamp yet): a new version
            if self.stored_rows:
                history.append((self.stored_rows, self._stamp or self._legacy_stamp))
            stamp = new_stamp()
        kept = list(self._segments)
        merged: List[Segment] = []
        if not (rewrite or self.layout == "single"):
            written = new
            while kept and self.layout == "auto" and kept[-1].rows <= written:
                merged.insert(0, kept.pop())
                written += merged[0].rows
        if rewrite or self.layout == "single" or not kept:
            self._fold_whole(complete, failed, stamp, history)
            return
        folder = segments_dir_for(self.path)
        folder.mkdir(exist_ok=True)
        if not self._segmented:  # the single file becomes the first segment: linked, never copied
            first = next_segment(folder)
            _link_or_copy(self.path, first)
            kept = [Segment(first, 0, kept[0].rows)]
        added: List[Segment] = []
        if new or merged:
            seg = next_segment(folder)
            start = merged[0].start if merged else self.stored_rows
            skip = set(self._store_keys)

            def blocks() -> Iterator[Rows]:
                if merged:
                    with FeatureStore.open(self.path) as old:
                        yield from old.iter_rows(start=start)
                yield from self._journal_rows(skip)

            count = write_file_atomic(seg, self.meta, blocks(), failed=[], created=self.created, complete=True,
                                      rows_hint=new + sum(m.rows for m in merged))
            added = [Segment(seg, start, count)]
        segments = kept + added
        total = write_master(self.path, self.meta, [(s.path, s.rows) for s in segments], failed=failed,
                             created=self.created, complete=complete, stamp=stamp, history=history)
        remove_unreferenced_segments(self.path, [s.path for s in segments])
        self._after_fold(total, complete, stamp, history, segments, segmented=True)

    def _fold_whole(self, complete: bool, failed: List[Tuple[str, str]], stamp: str,
                    history: List[Tuple[int, str]]) -> None:
        skip: Set[str] = set()
        copy_only = not self._journal.records  # nothing to de-duplicate: copy stored paths as raw bytes

        def blocks() -> Iterator[Rows]:
            if self.path.exists():
                with FeatureStore.open(self.path) as old:
                    for rows in old.iter_rows(raw_paths=copy_only):
                        if not copy_only:
                            skip.update(rows.paths)
                        yield rows
            yield from self._journal_rows(skip)

        total = write_file_atomic(self.path, self.meta, blocks(), failed=failed, created=self.created,
                                  complete=complete, stamp=stamp, history=history,
                                  rows_hint=self.stored_rows + self._new_rows(),
                                  exact_rows=self.stored_rows if copy_only else None)
        remove_unreferenced_segments(self.path, [])
        self._after_fold(total, complete, stamp, history, [Segment(self.path, 0, total)] if total else [],
                         segmented=False)

    def _after_fold(self, total: int, complete: bool, stamp: str, history: List[Tuple[int, str]],
                    segments: List[Segment], segmented: bool) -> None:
        for rec in self._journal.records:
            if self._store_keys_ is not None:
                self._store_keys_.update(rec.paths)
        self.stored_rows = total
        self.complete = complete
        self._stamp, self._history = stamp, history
        self._segments, self._segmented = segments, segmented
        self._last_fold = time.monotonic()

    def compact(self) -> int:
        """Fold the journal and rewrite the whole store as one file (no segments); return the row count."""
        self._journal.sync()
        self._fold(self.complete, rewrite=True)
        self._journal.reset(self._journal_header())
        return self.stored_rows


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes another name of ``src``'s content (a hard link; a durable copy where links are refused)."""
    try:
        os.link(src, dst)
    except OSError:
        atomic_copy(src, dst)
    fsync_dir(dst.parent)


@dataclass
class Compaction:
    """What :func:`compact` did."""

    path: Path
    rows: int
    segments_before: int
    segments_after: int
    bytes_before: int  #: the store's files (master and segments) before
    bytes_after: int


def store_bytes(path: PathLike) -> int:
    """Bytes on disk of a store: its file plus its segment files."""
    p = Path(path)
    total = p.stat().st_size if p.exists() else 0
    folder = segments_dir_for(p)
    if folder.is_dir():
        total += sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return total


def compact(path: PathLike) -> Compaction:
    """Merge a store's segments (and an interrupted run's journal) into one file, atomically, under the lock.

    The rows, their order, the ``complete`` flag and the version stamp stay as they are; only the layout
    changes. A store that is one file already is rewritten only when a journal is pending.
    """
    p = Path(path)
    with FeatureStore.open(p) as store:
        meta, before, size = store.meta, len(store.segments), store_bytes(p)
        single = store.layout == "single"
    writer = StoreWriter(p, meta)
    try:
        if not (single and not writer.recovered):
            writer.compact()
    except BaseException:
        writer.abort()
        raise
    writer.close(complete=writer.complete)
    return Compaction(p, writer.stored_rows, before, 1 if writer.stored_rows else 0, size, store_bytes(p))
