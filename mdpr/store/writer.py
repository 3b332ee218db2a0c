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
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Set, Tuple

import numpy as np

from mdpr.errors import MdprError
from mdpr.fileio import describe_os_error
from mdpr.store.hdf5 import is_temporary_of, write_file_atomic
from mdpr.store.journal import Journal
from mdpr.store.reader import FeatureStore
from mdpr.store.schema import PathLike, Rows, StoreMeta, journal_path_for, now, validated_rows


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
    ) -> None:
        self.path = Path(path)
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
        self.keys: Set[str] = set()
        self.failed: Dict[str, str] = {}
        if self.path.exists():
            with FeatureStore.open(self.path) as store:
                store.meta.check_compatible(meta, str(self.path))
                # The stored description wins (root, created, config) so resuming never changes it.
                self.meta = store.meta
                self.created = store.created or now()
                self.stored_rows = len(store)
                self.complete = store.complete
                for start in range(0, self.stored_rows, 1 << 16):
                    self.keys.update(store._h5["paths"].asstr(errors="surrogateescape")[start : start + (1 << 16)])
                self.failed = dict(store.failed)
        else:
            self.meta = meta
            self.created = now()
            self.stored_rows = 0
            self.complete = False
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
                self.keys.update(rec.paths)
                self.failed.update({p: r for p, r in rec.failed})
        if not self.path.exists():
            # Create the (empty) store right away: the file exists and is readable from the start.
            self._fold(complete=False)
        self._last_fold = time.monotonic()

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
    def _fold(self, complete: bool) -> None:
        stored_keys: Set[str] = set()
        failed = [(p, r) for p, r in self.failed.items() if p not in self.keys]

        def blocks() -> Iterator[Rows]:
            if self.path.exists():
                with FeatureStore.open(self.path) as old:
                    n = len(old)
                    step = old.default_chunk_rows(old.dtype)
                    for start in range(0, n, step):
                        stop = min(n, start + step)
                        paths = list(old._h5["paths"].asstr(errors="surrogateescape")[start:stop])
                        stored_keys.update(paths)
                        yield Rows(
                            features=np.asarray(old._features[start:stop]),
                            paths=paths,
                            pids=np.asarray(old._h5["pids"][start:stop], dtype=np.int32),
                            camids=np.asarray(old._h5["camids"][start:stop], dtype=np.int32),
                        )
            for rec in self._journal.records:
                info, feats = self._journal.read(rec, self.meta)
                # A crash between the rename and the journal reset leaves rows in both places: keep one.
                keep = [i for i, p in enumerate(info["paths"]) if p not in stored_keys]
                if not keep:
                    continue
                stored_keys.update(info["paths"][i] for i in keep)
                idx = np.asarray(keep, dtype=np.int64)
                yield Rows(
                    features=feats[idx],
                    paths=[info["paths"][i] for i in keep],
                    pids=np.asarray(info["pids"], dtype=np.int32)[idx],
                    camids=np.asarray(info["camids"], dtype=np.int32)[idx],
                )

        self.stored_rows = write_file_atomic(
            self.path, self.meta, blocks(), failed=failed, created=self.created, complete=complete
        )
        self.complete = complete
        self._last_fold = time.monotonic()
