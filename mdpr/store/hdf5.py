"""Writing store files: one complete HDF5 file at a time, put in place atomically.

HDF5 is not journaled, so a store file is never modified in place: it is written whole to a temporary
file beside its destination and renamed over it (:func:`mdpr.fileio.atomic_path`, the one durability
rule), so readers and restarted writers always see a complete file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from mdpr import __version__
from mdpr.fileio import atomic_path
from mdpr.store.schema import (
    BLOCK_BYTES,
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


def write_store(
    path: PathLike,
    meta: StoreMeta,
    features: np.ndarray,
    paths: Sequence[str],
    pids: Optional[Sequence[int]] = None,
    camids: Optional[Sequence[int]] = None,
    failed: Sequence[Tuple[str, str]] = (),
) -> Path:
    """Write a whole store in one go, atomically (features are L2-normalised first when ``meta.normalized``)."""
    rows = validated_rows(meta, features, list(paths), pids, camids)
    created = now()
    write_file_atomic(Path(path), meta, iter([rows]), failed=list(failed), created=created, complete=True)
    return Path(path)


def write_file_atomic(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
) -> int:
    """Write a complete store file from ``blocks`` and put it in place atomically; return its row count."""
    with atomic_path(path) as tmp:
        return write_file(tmp, meta, blocks, failed=failed, created=created, complete=complete)


def is_temporary_of(name: str, store_name: str) -> bool:
    """True when ``name`` is a temporary file left beside ``store_name`` by an interrupted atomic write."""
    # atomic_path's pattern, and the pattern of mdpr 0.x (``<store>.tmp-<pid>``)
    return (name.startswith(f".{store_name}.") and name.endswith(".tmp")) or name.startswith(f"{store_name}.tmp-")


def write_file(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
) -> int:
    """Write a complete store file at ``path`` (no atomicity: callers write to a temporary path)."""
    chunk = chunk_rows_for(meta.dim, meta.dtype)
    str_dtype = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", libver=LIBVER) as h5:
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
        a["created"] = created
        feats = h5.create_dataset("features", shape=(0, meta.dim), maxshape=(None, meta.dim), dtype=meta.dtype,
                                  chunks=(chunk, meta.dim))
        paths = h5.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=str_dtype, chunks=(4096,))
        pids = h5.create_dataset("pids", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(16384,))
        camids = h5.create_dataset("camids", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(16384,))
        n = 0
        for rows in _coalesce(blocks, max(chunk, BLOCK_BYTES // (meta.dim * np.dtype(meta.dtype).itemsize))):
            m = len(rows.paths)
            if m == 0:
                continue
            for ds in (feats, paths, pids, camids):
                ds.resize(n + m, axis=0)
            feats[n : n + m] = rows.features
            paths[n : n + m] = np.array([encode_path(p) for p in rows.paths], dtype=object)
            pids[n : n + m] = rows.pids
            camids[n : n + m] = rows.camids
            n += m
        a["failed_images"] = json.dumps([{"path": p, "reason": r} for p, r in failed])
        a["complete"] = bool(complete)
        a["updated"] = now()
    return n


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
