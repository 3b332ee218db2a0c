"""Writing store files: one complete HDF5 file at a time, put in place atomically.

HDF5 is not journaled, so a store file is never modified in place: it is written whole to a temporary
file beside its destination and renamed over it (:func:`mdpr.fileio.atomic_path`, the one durability
rule), so readers and restarted writers always see a complete file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from mdpr import __version__
from mdpr.fileio import atomic_path, ensure_free_space, fsync_dir
from mdpr.store.schema import (
    LIBVER,
    SCHEMA_VERSION,
    STORE_FORMAT,
    PathLike,
    Rows,
    StoreMeta,
    chunk_rows_for,
    encode_path,
    now,
    validated_rows,
)
from mdpr.store.validation import segments_dir_for


def write_store(
    path: PathLike,
    meta: StoreMeta,
    features: np.ndarray,
    paths: Sequence[str],
    pids: Optional[Sequence[int]] = None,
    camids: Optional[Sequence[int]] = None,
    failed: Sequence[Tuple[str, str]] = (),
    segment_rows: Optional[int] = None,
) -> Path:
    """Write a whole store in one go, atomically (features are L2-normalised first when ``meta.normalized``).

    With ``segment_rows``, the rows go into segment files of that many rows under a master file (the
    layout appends produce); by default (:data:`DEFAULT_SEGMENT_ROWS`, None) into one file.
    """
    rows = validated_rows(meta, features, list(paths), pids, camids)
    created = now()
    out = Path(path)
    per = segment_rows if segment_rows is not None else DEFAULT_SEGMENT_ROWS
    n = len(rows.paths)
    if per is None or n <= per:
        write_file_atomic(out, meta, iter([rows]), failed=list(failed), created=created, complete=True, rows_hint=n)
        remove_unreferenced_segments(out, [])
        return out
    folder = segments_dir_for(out)
    folder.mkdir(parents=True, exist_ok=True)
    segments: List[Tuple[Path, int]] = []
    for start in range(0, n, int(per)):
        stop = min(n, start + int(per))
        part = Rows(rows.features[start:stop], rows.paths[start:stop], rows.pids[start:stop], rows.camids[start:stop])
        seg = next_segment(folder)
        write_file_atomic(seg, meta, iter([part]), failed=[], created=created, complete=True, rows_hint=stop - start)
        segments.append((seg, stop - start))
    write_master(out, meta, segments, failed=list(failed), created=created, complete=True, stamp=new_stamp(), history=())
    remove_unreferenced_segments(out, [seg for seg, _ in segments])
    return out


#: Rows per segment of :func:`write_store` when its ``segment_rows`` is not given (None: one file).
DEFAULT_SEGMENT_ROWS: Optional[int] = None


def remove_unreferenced_segments(store: Path, keep: Sequence[Path]) -> None:
    """Delete the files of ``store``'s segment folder that ``keep`` does not list (left by merges or crashes).

    Only a writer of the store calls this (it holds the journal lock, or writes the store whole).
    """
    folder = segments_dir_for(store)
    if not folder.is_dir():
        return
    kept = {p.name for p in keep}
    for entry in folder.iterdir():
        if entry.name not in kept:
            with contextlib.suppress(OSError):  # a reader on Windows may still hold it: removed next time
                entry.unlink()
    if not kept:
        with contextlib.suppress(OSError):
            folder.rmdir()
    fsync_dir(folder if kept else store.parent)


#: what the free-space check assumes for a stored path and for a file's own structures (generous: a refusal
#: says how much is missing, a crash loses the run)
_PATH_BYTES_ESTIMATE = 160
_FILE_OVERHEAD = 64 << 10


def write_file_atomic(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
    stamp: str = "",
    history: Sequence[Tuple[int, str]] = (),
    rows_hint: Optional[int] = None,
    exact_rows: Optional[int] = None,
) -> int:
    """Write a complete store file from ``blocks`` and put it in place atomically; return its row count.

    ``exact_rows``: the blocks hold exactly this many rows (a copy of stored rows, as compaction makes); the
    features are then written straight into the file's preallocated chunks while HDF5 writes the paths.

    Refused before writing when the disk lacks the room (HDF5 does not survive a full disk: its objects break
    and the interpreter can crash when they are collected); the caller's journal keeps the rows meanwhile.
    """
    if rows_hint is not None:
        per_row = meta.dim * np.dtype(meta.dtype).itemsize + 8 + _PATH_BYTES_ESTIMATE
        ensure_free_space(path, int(rows_hint) * per_row + _FILE_OVERHEAD, "the feature store")
    with atomic_path(path) as tmp:
        return write_file(tmp, meta, blocks, failed=failed, created=created, complete=complete, stamp=stamp,
                          history=history, rows_hint=rows_hint, exact_rows=exact_rows)


def is_temporary_of(name: str, store_name: str) -> bool:
    """True when ``name`` is a temporary file left beside ``store_name`` by an interrupted atomic write."""
    # atomic_path's pattern, and the pattern of mdpr 0.x (``<store>.tmp-<pid>``)
    return (name.startswith(f".{store_name}.") and name.endswith(".tmp")) or name.startswith(f"{store_name}.tmp-")


def _write_attrs(h5: h5py.File, meta: StoreMeta, created: str, stamp: str, history: Sequence[Tuple[int, str]]) -> None:
    a = h5.attrs
    a["format"] = STORE_FORMAT
    a["schema_version"] = SCHEMA_VERSION
    a["mdpr_version"] = __version__
    a["model_fingerprint"] = meta.fingerprint
    a["model_config"] = json.dumps(meta.model_config, sort_keys=True)
    a["preprocessing"] = json.dumps(meta.preprocessing, sort_keys=True)
    a["normalized"] = bool(meta.normalized)
    a["flip"] = bool(meta.flip)
    a["root"] = _attr_text(meta.root or "")
    a["weights"] = _attr_text(meta.weights or "")
    a["backend"] = meta.backend
    a["precision"] = meta.precision
    a["created"] = created
    a["version_stamp"] = stamp or new_stamp()
    a["history"] = json.dumps([[int(r), str(s)] for r, s in history])


def _write_end_attrs(h5: h5py.File, failed: List[Tuple[str, str]], complete: bool) -> None:
    a = h5.attrs
    a["failed_images"] = json.dumps([{"path": p, "reason": r} for p, r in failed])
    a["complete"] = bool(complete)
    a["updated"] = now()


def new_stamp() -> str:
    """A fresh version stamp (random: two stores or two versions never share one)."""
    return uuid.uuid4().hex


def write_file(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
    stamp: str = "",
    history: Sequence[Tuple[int, str]] = (),
    rows_hint: Optional[int] = None,
    exact_rows: Optional[int] = None,
) -> int:
    """Write a complete store file at ``path`` (no atomicity: callers write to a temporary path).

    ``rows_hint`` (the rows about to be written, when known) keeps the chunks of a small file small;
    ``exact_rows`` see :func:`write_file_atomic`.
    """
    if exact_rows is not None:
        rows_hint = exact_rows
    chunk = chunk_rows_for(meta.dim, meta.dtype)
    if rows_hint is not None:
        chunk = max(1, min(chunk, int(rows_hint)))
    with h5py.File(path, "w", libver=LIBVER) as h5:
        _write_attrs(h5, meta, created, stamp, history)
        if exact_rows:
            direct = _DirectFeatures.create(h5, path, meta, int(exact_rows), chunk)
            if direct is not None:
                with direct:
                    n = _write_rows_direct(h5, direct, blocks, int(exact_rows), rows_hint)
                _write_end_attrs(h5, failed, complete)
                return n
            del h5["features"]
        feats = h5.create_dataset("features", shape=(0, meta.dim), maxshape=(None, meta.dim), dtype=meta.dtype,
                                  chunks=(chunk, meta.dim))
        columns = _row_columns(h5, 0, rows_hint)
        n = 0
        for rows in _coalesce(blocks, chunk):  # journal batches join up to a chunk; large blocks pass as they are
            m = len(rows.paths)
            if m == 0:
                continue
            for ds in (feats, *columns):
                ds.resize(n + m, axis=0)
            feats[n : n + m] = rows.features
            _write_columns(columns, n, rows)
            n += m
        _write_end_attrs(h5, failed, complete)
    return n


class _DirectFeatures:
    """A ``features`` dataset of known size whose chunks HDF5 allocates up front, back to back, and which
    this process then fills with plain ``pwrite`` calls from a worker thread (no HDF5 call, so no HDF5
    lock: the paths are written through HDF5 at the same time)."""

    def __init__(self, fd: int, base: int, dtype: np.dtype, dim: int) -> None:
        self.fd, self.base, self.dtype, self.row_bytes = fd, base, dtype, dim * dtype.itemsize
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdpr-store-copy")

    @classmethod
    def create(cls, h5: h5py.File, path: Path, meta: StoreMeta, rows: int, chunk: int) -> Optional[_DirectFeatures]:
        """The dataset, or None (the caller writes through HDF5) where the chunks are not laid out in order."""
        if not hasattr(h5py.h5d.DatasetID, "chunk_iter") or not hasattr(os, "pwrite"):
            return None  # HDF5 before 1.12.3 (no chunk offsets to write to), or no pwrite (Windows)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((chunk, meta.dim))
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every byte is written below: no zeros first
        space = h5py.h5s.create_simple((rows, meta.dim), (h5py.h5s.UNLIMITED, meta.dim))
        dtype = np.dtype(meta.dtype)
        h5py.h5d.create(h5.id, b"features", h5py.h5t.py_create(dtype), space, dcpl=dcpl)
        chunk_bytes = chunk * meta.dim * dtype.itemsize
        offsets: List[int] = []
        h5["features"].id.chunk_iter(lambda info: offsets.append(int(info.byte_offset)))
        if len(offsets) != -(-rows // chunk) or any(o != offsets[0] + i * chunk_bytes for i, o in enumerate(offsets)):
            # never seen for a new file's early allocation; the caller replaces the dataset (its space is lost)
            return None
        return cls(os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0)), offsets[0], dtype, meta.dim)

    def write(self, start: int, features: np.ndarray) -> concurrent.futures.Future[None]:
        data = np.ascontiguousarray(features, dtype=self.dtype)
        return self.pool.submit(self._pwrite, data.data.cast("B"), self.base + start * self.row_bytes)

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while data:
            done = os.pwrite(self.fd, data, offset)
            data, offset = data[done:], offset + done

    def __enter__(self) -> _DirectFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        os.close(self.fd)


def _row_columns(h5: h5py.File, rows: int, rows_hint: Optional[int]) -> Tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset]:
    """The paths, pids and camids datasets of a new file, ``rows`` long and growable."""
    str_dtype = h5py.string_dtype("utf-8")
    return (
        h5.create_dataset("paths", shape=(rows,), maxshape=(None,), dtype=str_dtype, chunks=(_small(4096, rows_hint),)),
        h5.create_dataset("pids", shape=(rows,), maxshape=(None,), dtype=np.int32, chunks=(_small(16384, rows_hint),)),
        h5.create_dataset("camids", shape=(rows,), maxshape=(None,), dtype=np.int32, chunks=(_small(16384, rows_hint),)),
    )


def _write_columns(columns: Tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset], start: int, rows: Rows) -> None:
    """Rows ``start..`` of the paths (stored bytes kept as they are), pids and camids."""
    paths, pids, camids = columns
    stop = start + len(rows.paths)
    paths[start:stop] = np.array([p if isinstance(p, bytes) else encode_path(p) for p in rows.paths], dtype=object)
    pids[start:stop] = rows.pids
    camids[start:stop] = rows.camids


def _write_rows_direct(h5: h5py.File, direct: _DirectFeatures, blocks: Iterable[Rows], rows: int,
                       rows_hint: Optional[int]) -> int:
    columns = _row_columns(h5, rows, rows_hint)
    n = 0
    for block in blocks:
        m = len(block.paths)
        if n + m > rows:
            raise ValueError(f"the rows to copy are more than the {rows} announced")
        # the features go to the file while HDF5 takes the paths; the block (often a view of a memory-mapped
        # source) is waited for before the next one is asked for, so the source stays open meanwhile
        pending = direct.write(n, block.features)
        _write_columns(columns, n, block)
        pending.result()
        n += m
    if n != rows:
        raise ValueError(f"the rows to copy are {n}, not the {rows} announced")
    return n


def write_master(
    path: Path,
    meta: StoreMeta,
    segments: Sequence[Tuple[Path, int]],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
    stamp: str,
    history: Sequence[Tuple[int, str]],
) -> int:
    """Put in place, atomically, a master file whose row datasets are virtual datasets over ``segments``.

    ``segments`` are ``(segment file, rows)`` in row order, each file inside the store's segment folder;
    they are referenced by names relative to the master's folder, so the store can be moved as a whole.
    """
    n = sum(rows for _, rows in segments)
    columns = (("features", np.dtype(meta.dtype), (meta.dim,)), ("paths", h5py.string_dtype("utf-8"), ()),
               ("pids", np.dtype(np.int32), ()), ("camids", np.dtype(np.int32), ()))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver=LIBVER) as h5:
            _write_attrs(h5, meta, created, stamp, history)
            for name, dtype, tail in columns:
                layout = h5py.VirtualLayout(shape=(n, *tail), dtype=dtype)
                start = 0
                for seg, rows in segments:
                    rel = f"{seg.parent.name}/{seg.name}"
                    layout[start : start + rows] = h5py.VirtualSource(rel, name, shape=(rows, *tail), dtype=dtype)
                    start += rows
                h5.create_virtual_dataset(name, layout)
            _write_end_attrs(h5, failed, complete)
    return n


def segment_name(number: int) -> str:
    return f"{number:06d}.h5"


def segment_number(name: str) -> Optional[int]:
    """The number of a segment file name (``000012.h5`` -> 12), None for other names."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "h5" and stem.isdigit() and len(stem) == 6 else None


def next_segment(folder: Path) -> Path:
    """A segment file name in ``folder`` that was never used (numbers only grow)."""
    used = [segment_number(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return folder / segment_name(max([u for u in used if u is not None], default=-1) + 1)


def _small(chunk: int, rows_hint: Optional[int]) -> int:
    return chunk if rows_hint is None else max(1, min(chunk, int(rows_hint)))


def _attr_text(text: str) -> object:
    """A text attribute: a UTF-8 string, or its raw bytes for a folder name that is not valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return np.bytes_(encode_path(text))


def _coalesce(blocks: Iterable[Rows], target: int) -> Iterator[Rows]:
    """Merge small blocks (journal batches) into blocks of about ``target`` rows to write efficiently."""
    pending: List[Rows] = []
    count = 0
    for rows in blocks:
        if len(rows.paths) >= target and not pending:
            yield rows
            continue
        pending.append(rows)
        count += len(rows.paths)
        if count >= target:
            yield _concat(pending)
            pending, count = [], 0
    if pending:
        yield _concat(pending)


def _concat(parts: List[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    return Rows(
        features=np.concatenate([p.features for p in parts]),
        paths=[s for p in parts for s in p.paths],
        pids=np.concatenate([p.pids for p in parts]),
        camids=np.concatenate([p.camids for p in parts]),
    )
