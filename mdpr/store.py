"""The feature store: one HDF5 file of (path, pid, camid, feature) rows plus the metadata to trust them.

Layout (schema version 1; ``docs/feature-store.md`` is the reference)::

    /features  (N, D) float32 or float16, chunked by rows (about 1 MiB per chunk), resizable
    /paths     (N,)   UTF-8 strings, relative to the ``root`` attribute when the image lies under it
    /pids      (N,)   int32, -1 when unknown
    /camids    (N,)   int32, 0-based, -1 when unknown
    attributes: format, schema_version, mdpr_version, model_fingerprint, model_config (JSON),
                preprocessing (JSON), normalized, flip, root, created, updated, complete,
                failed_images (JSON list of {"path", "reason"})

Crash safety. HDF5 is not journaled: a process killed while it modifies a file in place can leave
it unreadable. So a store file is never modified in place. :class:`StoreWriter` appends each batch to
a small write-ahead journal next to the store (``<store>.journal``: length-prefixed, CRC-checked
records, so a torn tail is detected and dropped) and *folds* the journal into the store by writing
a complete new file and atomically renaming it over the old one (at the end, on Ctrl-C, and every
``checkpoint_interval`` seconds when the store has grown enough to be worth rewriting). Whatever
kills the process, the store file is a complete previous version, the journal holds everything
since, and rows are de-duplicated by path when folding, so re-running continues with every image
exactly once.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import h5py
import numpy as np

from mdpr import __version__
from mdpr.errors import MdprError
from mdpr.fileio import fsync_dir, fsync_file
from mdpr.runtime import l2_normalize

PathLike = Union[str, "os.PathLike[str]"]

#: Identifies an mdpr store among HDF5 files.
STORE_FORMAT = "mdpr-feature-store"
#: Version of the layout described above; bump when readers would misread a newer file.
SCHEMA_VERSION = 1
#: Feature chunks are about this many bytes (a row block covering every column).
CHUNK_BYTES = 1 << 20
#: Blocks read or copied at once, in bytes (bounded memory).
BLOCK_BYTES = 64 << 20
# v108 at least so that large attributes (a long failed-images list) are allowed; at most v110 so
# HDF5 1.10 tools can still read the files.
_LIBVER = ("v108", "v110")
_DTYPES = ("float32", "float16")
UNKNOWN = -1

_JOURNAL_MAGIC = b"MDPRJNL1"
_RECORD_MAGIC = b"MDRB"
_RECORD_HEADER = struct.Struct("<4sQI")  # magic, payload length, crc32(payload)
_U32 = struct.Struct("<I")


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class StoreMeta:
    """What a store's rows mean: the model and preprocessing that produced them and their encoding."""

    dim: int
    dtype: str = "float32"  #: "float32" or "float16" (storage precision)
    fingerprint: str = ""  #: :func:`mdpr.model.saving.state_dict_fingerprint` of the weights
    normalized: bool = True  #: rows are L2-normalised (cosine similarity is a dot product)
    flip: bool = False  #: features average the image and its horizontal mirror
    model_config: Dict[str, Any] = field(default_factory=dict)
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    root: Optional[str] = None  #: absolute folder that relative ``paths`` are relative to

    def __post_init__(self) -> None:
        self.dim = int(self.dim)
        self.dtype = np.dtype(self.dtype).name
        if self.dtype not in _DTYPES:
            raise MdprError(f"Feature store dtype must be float32 or float16, not {self.dtype}.")
        if self.dim <= 0:
            raise MdprError(f"Feature dimension must be positive, not {self.dim}.")

    def essentials(self) -> Dict[str, Any]:
        """The fields two stores must share for their rows to be comparable."""
        return {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "normalized": bool(self.normalized),
            "flip": bool(self.flip),
        }

    def check_compatible(self, other: StoreMeta, where: str) -> None:
        """Raise :class:`MdprError` when rows described by ``other`` cannot join ``where`` (described by self)."""
        if self.fingerprint != other.fingerprint:
            raise MdprError(
                f"{where} was made with other weights (fingerprint {self.fingerprint[:16] or 'none'}, these weights "
                f"have {other.fingerprint[:16] or 'none'}); use the same weights, or write to another store."
            )
        if self.dim != other.dim:
            raise MdprError(f"{where} holds {self.dim}-d features, not {other.dim}-d; write to another store.")
        if self.flip != other.flip:
            said = "with" if self.flip else "without"
            raise MdprError(f"{where} was extracted {said} flip averaging (--flip); use the same option or another store.")
        if self.dtype != other.dtype:
            said = "float16 (--half)" if self.dtype == "float16" else "float32 (no --half)"
            raise MdprError(f"{where} stores {said} features; use the same precision or another store.")
        if self.normalized != other.normalized:
            said = "L2-normalised" if self.normalized else "raw (not normalised)"
            raise MdprError(f"{where} stores {said} features; use the same setting or another store.")

    def to_json(self) -> Dict[str, Any]:
        return {**self.essentials(), "model_config": self.model_config, "preprocessing": self.preprocessing,
                "root": self.root}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> StoreMeta:
        return cls(
            dim=data["dim"], dtype=data["dtype"], fingerprint=data["fingerprint"], normalized=data["normalized"],
            flip=data["flip"], model_config=data.get("model_config") or {},
            preprocessing=data.get("preprocessing") or {}, root=data.get("root"),
        )


def path_key(path: PathLike, root: Optional[PathLike]) -> str:
    """The string stored for ``path``: POSIX and relative to ``root`` when under it, else absolute POSIX."""
    p = Path(os.path.abspath(path))
    if root is not None:
        try:
            return p.relative_to(os.path.abspath(root)).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def chunk_rows_for(dim: int, dtype: str) -> int:
    """Rows per HDF5 chunk of the features dataset (about :data:`CHUNK_BYTES`)."""
    return max(1, CHUNK_BYTES // (dim * np.dtype(dtype).itemsize))


# ----------------------------------------------------------------------------------------------------- reading


class FeatureStore:
    """A read-only view of a store file. Open with :meth:`open`; use as a context manager or :meth:`close`.

    Everything large is read lazily: :meth:`chunks` / :meth:`features` iterate in bounded blocks,
    :meth:`read_features` loads the matrix only when asked, :meth:`paths_at` reads selected paths.
    """

    def __init__(self, path: Path, h5: h5py.File) -> None:
        self.path = path
        self._h5 = h5
        attrs = h5.attrs
        self.schema_version = int(attrs["schema_version"])
        self.mdpr_version = str(attrs.get("mdpr_version", ""))
        self.created = str(attrs.get("created", ""))
        self.updated = str(attrs.get("updated", ""))
        self.complete = bool(attrs.get("complete", True))
        root = str(attrs.get("root", ""))
        self.meta = StoreMeta(
            dim=int(h5["features"].shape[1]),
            dtype=h5["features"].dtype.name,
            fingerprint=str(attrs.get("model_fingerprint", "")),
            normalized=bool(attrs.get("normalized", False)),
            flip=bool(attrs.get("flip", False)),
            model_config=_json_attr(attrs, "model_config", {}, path),
            preprocessing=_json_attr(attrs, "preprocessing", {}, path),
            root=root or None,
        )
        self.failed: List[Tuple[str, str]] = [
            (str(item["path"]), str(item.get("reason", ""))) for item in _json_attr(attrs, "failed_images", [], path)
        ]
        self._features = h5["features"]
        self._n = int(self._features.shape[0])
        for name in ("paths", "pids", "camids"):
            if int(h5[name].shape[0]) != self._n:
                raise MdprError(
                    f"Feature store {path} is damaged: '{name}' has {h5[name].shape[0]} rows but 'features' has "
                    f"{self._n}; re-create it with `mdpr extract`."
                )
        self._pids: Optional[np.ndarray] = None
        self._camids: Optional[np.ndarray] = None
        self._mapping: Any = None  # None: not tried yet; False: not mappable; else (mmap, chunk_rows, offsets)

    # -- opening
    @classmethod
    def open(cls, path: PathLike) -> FeatureStore:
        """Open an existing store for reading; :class:`MdprError` (one sentence) when it is not one."""
        p = Path(path)
        if not p.exists():
            raise MdprError(f"Feature store {p} does not exist; create it with `mdpr extract --output {p}`.")
        if p.is_dir():
            raise MdprError(f"Feature store {p} is a folder, not a file; pass the .h5 file written by `mdpr extract`.")
        if not h5py.is_hdf5(str(p)):
            raise MdprError(f"{p} is not an HDF5 file, so not an mdpr feature store; pass a file written by `mdpr extract`.")
        try:
            h5 = h5py.File(p, "r")
        except OSError as exc:
            raise MdprError(f"Feature store {p} could not be opened ({exc}); check the file and its permissions.") from None
        try:
            if h5.attrs.get("format") != STORE_FORMAT or "schema_version" not in h5.attrs:
                raise MdprError(
                    f"{p} is an HDF5 file but not an mdpr feature store (no format='{STORE_FORMAT}' attribute); "
                    "pass a file written by `mdpr extract`."
                )
            version = int(h5.attrs["schema_version"])
            if version > SCHEMA_VERSION:
                raise MdprError(
                    f"Feature store {p} uses schema version {version}, newer than this mdpr ({__version__}) reads "
                    f"(up to {SCHEMA_VERSION}); upgrade mdpr."
                )
            missing = [n for n in ("features", "paths", "pids", "camids") if n not in h5]
            if missing:
                raise MdprError(
                    f"Feature store {p} is damaged: dataset(s) {', '.join(missing)} missing; re-create it with `mdpr extract`."
                )
            return cls(p, h5)
        except BaseException:
            h5.close()
            raise

    def close(self) -> None:
        if self._mapping:
            with contextlib.suppress(BufferError):  # a caller still holds a view: the GC unmaps it later
                self._mapping[0].close()
        self._mapping = False
        self._h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, rows={self._n}, dim={self.dim}, dtype={self.meta.dtype}, "
                f"normalized={self.normalized}, fingerprint={self.fingerprint[:12]!r})")

    # -- metadata shortcuts
    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.dtype)

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def normalized(self) -> bool:
        return self.meta.normalized

    @property
    def flip(self) -> bool:
        return self.meta.flip

    @property
    def root(self) -> Optional[str]:
        return self.meta.root

    @property
    def model_config(self) -> Dict[str, Any]:
        return self.meta.model_config

    @property
    def preprocessing(self) -> Dict[str, Any]:
        return self.meta.preprocessing

    @property
    def journal_path(self) -> Path:
        return journal_path_for(self.path)

    @property
    def has_pending_journal(self) -> bool:
        """True when an interrupted extraction left rows that are not folded into this file yet."""
        return self.journal_path.exists()

    # -- rows
    @property
    def paths(self) -> List[str]:
        """All stored paths (as stored: relative to :attr:`root` when possible)."""
        return list(self._h5["paths"].asstr()[...])

    def paths_at(self, indices: Sequence[int]) -> List[str]:
        """Stored paths of the given rows, in the given order (reads only those rows)."""
        return _take(self._h5["paths"].asstr(), indices)

    def resolve(self, stored_path: str) -> Path:
        """Absolute location of a stored path (joined to :attr:`root` when relative)."""
        p = Path(stored_path)
        if not p.is_absolute() and self.root:
            return Path(self.root) / p
        return p

    @property
    def pids(self) -> np.ndarray:
        """(N,) int32, -1 when unknown."""
        if self._pids is None:
            self._pids = np.asarray(self._h5["pids"][...], dtype=np.int32)
        return self._pids

    @property
    def camids(self) -> np.ndarray:
        """(N,) int32, 0-based, -1 when unknown."""
        if self._camids is None:
            self._camids = np.asarray(self._h5["camids"][...], dtype=np.int32)
        return self._camids

    def default_chunk_rows(self, dtype: Any = np.float32) -> int:
        return max(1, BLOCK_BYTES // (self.dim * np.dtype(dtype).itemsize))

    def chunks(self, chunk_rows: Optional[int] = None, dtype: Any = np.float32) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` over the rows in order; each block is a fresh (rows, D) array."""
        rows = int(chunk_rows or self.default_chunk_rows(dtype))
        for start in range(0, self._n, rows):
            stop = min(self._n, start + rows)
            yield start, np.asarray(self._features[start:stop], dtype=dtype)

    def features(self, chunk_rows: Optional[int] = None, dtype: Any = np.float32) -> Iterator[np.ndarray]:
        """Yield the feature matrix block by block (bounded memory), in row order."""
        for _, block in self.chunks(chunk_rows, dtype):
            yield block

    def read_features(self, dtype: Any = None, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """The whole (N, D) matrix (or the given rows, in the given order) in memory; dtype defaults to the stored one."""
        dtype = np.dtype(dtype or self.dtype)
        if rows is not None:
            idx = np.asarray(rows, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= self._n):
                raise IndexError(f"row index out of range for a store of {self._n} rows")
            mapped = self._mapped()
            if mapped is None:
                return np.asarray(_take(self._features, idx), dtype=dtype).reshape(-1, self.dim)
            mm, chunk_rows, offsets = mapped
            row_bytes = self.dim * self.dtype.itemsize
            out = np.empty((idx.size, self.dim), dtype=dtype)
            for i, r in enumerate(idx.tolist()):  # one row each, straight from the mapped chunk
                offset = offsets[r // chunk_rows] + (r % chunk_rows) * row_bytes
                out[i] = np.frombuffer(mm, dtype=self.dtype, count=self.dim, offset=offset)
            return out
        out = np.empty((self._n, self.dim), dtype=dtype)
        step = self.default_chunk_rows(self.dtype)
        for start in range(0, self._n, step):
            stop = min(self._n, start + step)
            if dtype == self.dtype:
                self._features.read_direct(out, np.s_[start:stop], np.s_[start:stop])
            else:
                out[start:stop] = self._features[start:stop]
        return out

    def scan(self, block_bytes: int = 32 << 20, prefetch_bytes: int = 32 << 20) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` in row order as zero-copy views in the stored dtype (do not modify them).

        The fastest way through the whole matrix: uncompressed chunks are memory-mapped, runs of chunks
        that lie back to back in the file are served as one block of up to ``block_bytes``, and the
        kernel is asked to read ``prefetch_bytes`` ahead (``MADV_WILLNEED``) so that disk reads overlap
        with the caller's compute. Falls back to ordinary HDF5 reads when the layout does not allow mapping.
        """
        mapped = self._mapped()
        if mapped is None:
            yield from self.chunks(self.default_chunk_rows(self.dtype), dtype=self.dtype)
            return
        mm, chunk_rows, offsets = mapped
        chunk_bytes = chunk_rows * self.dim * self.dtype.itemsize
        per_block = max(1, block_bytes // chunk_bytes)
        runs: List[Tuple[int, int]] = []  # (first chunk, number of chunks)
        for i, offset in enumerate(offsets):
            first, count = runs[-1] if runs else (-1, 0)
            if runs and count < per_block and offset == offsets[first] + count * chunk_bytes:
                runs[-1] = (first, count + 1)
            else:
                runs.append((i, 1))
        position = [0]  # bytes before each run, in scan order
        for _, count in runs:
            position.append(position[-1] + count * chunk_bytes)
        advised = 0  # runs already handed to the kernel's read-ahead
        for r, (first, count) in enumerate(runs):
            while advised < len(runs) and position[advised] < position[r + 1] + prefetch_bytes:
                a_first, a_count = runs[advised]
                _willneed(mm, offsets[a_first], a_count * chunk_bytes)
                advised += 1
            start = first * chunk_rows
            n = min(count * chunk_rows, self._n - start)
            yield start, np.frombuffer(mm, dtype=self.dtype, count=n * self.dim, offset=offsets[first]).reshape(n, self.dim)

    def _mapped(self) -> Optional[Tuple[mmap.mmap, int, List[int]]]:
        """``(memory map of the file, rows per chunk, byte offset of each chunk)``, or None when not mappable."""
        if self._mapping is None:
            self._mapping = False
            layout = self._chunk_layout()
            if layout is not None:
                try:
                    with open(self.path, "rb") as fh:
                        # Copy-on-write: the views are writable numpy arrays (torch takes them without a
                        # warning) and nothing written to them could ever reach the file.
                        self._mapping = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), *layout)
                except (OSError, ValueError):
                    self._mapping = False
        return self._mapping or None

    def _chunk_layout(self) -> Optional[Tuple[int, List[int]]]:
        """``(rows per chunk, byte offset of each chunk in row order)`` when every chunk can be mapped directly."""
        d = self._features
        if self._n == 0 or d.chunks is None or d.chunks[1] != self.dim:
            return None
        if d.compression or d.shuffle or d.fletcher32 or d.scaleoffset is not None:
            return None
        if d.dtype.byteorder not in ("=", "<", "|") or sys.byteorder != "little":
            return None
        chunk_rows = int(d.chunks[0])
        chunk_bytes = chunk_rows * self.dim * self.dtype.itemsize
        expected = math.ceil(self._n / chunk_rows)
        found: Dict[int, int] = {}
        try:
            def visit(info: Any) -> None:
                if info.filter_mask == 0 and info.size == chunk_bytes:
                    found[int(info.chunk_offset[0]) // chunk_rows] = int(info.byte_offset)

            d.id.chunk_iter(visit)
        except (AttributeError, RuntimeError, TypeError):
            return None
        if len(found) != expected or any(i not in found for i in range(expected)):
            return None
        return chunk_rows, [found[i] for i in range(expected)]


def _willneed(mm: mmap.mmap, offset: int, length: int) -> None:
    page = mmap.PAGESIZE
    start = offset - offset % page
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_WILLNEED, start, min(length + (offset - start), len(mm) - start))


def _take(dataset: Any, indices: Sequence[int]) -> List[Any]:
    """``dataset[indices]`` for any order / duplicates (h5py wants sorted unique indices)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return []
    uniq, inverse = np.unique(idx, return_inverse=True)
    values = dataset[uniq.tolist()] if uniq.size > 1 else dataset[int(uniq[0]) : int(uniq[0]) + 1]
    return [values[i] for i in inverse]


def _json_attr(attrs: Any, name: str, default: Any, path: Path) -> Any:
    raw = attrs.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise MdprError(f"Feature store {path} is damaged: attribute '{name}' is not valid JSON; re-create it.") from None


def journal_path_for(store_path: PathLike) -> Path:
    p = Path(store_path)
    return p.with_name(p.name + ".journal")


# ----------------------------------------------------------------------------------------------------- writing


@dataclass
class _Rows:
    """A block of rows on its way into a store file."""

    features: np.ndarray
    paths: List[str]
    pids: np.ndarray
    camids: np.ndarray


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
    rows = _validated_rows(meta, features, list(paths), pids, camids)
    created = _now()
    _write_file_atomic(Path(path), meta, iter([rows]), failed=list(failed), created=created, complete=True)
    return Path(path)


def _validated_rows(
    meta: StoreMeta,
    features: Any,
    paths: List[str],
    pids: Optional[Sequence[int]],
    camids: Optional[Sequence[int]],
) -> _Rows:
    feats = np.asarray(features)
    if feats.ndim == 1 and feats.size == meta.dim:
        feats = feats.reshape(1, -1)
    if feats.ndim != 2 or feats.shape[1] != meta.dim:
        raise MdprError(f"Features must be an (N, {meta.dim}) array, got shape {feats.shape}.")
    n = feats.shape[0]
    if len(paths) != n:
        raise MdprError(f"Got {n} feature rows but {len(paths)} paths; pass one path per row.")
    if not np.all(np.isfinite(feats)):
        raise MdprError("Features contain NaN or infinity; check the model and its inputs.")
    feats = l2_normalize(feats) if meta.normalized else np.asarray(feats, dtype=np.float32)
    return _Rows(
        features=feats.astype(meta.dtype, copy=False),
        paths=[str(p) for p in paths],
        pids=_int_column(pids, n, "pids"),
        camids=_int_column(camids, n, "camids"),
    )


def _int_column(values: Optional[Sequence[int]], n: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, UNKNOWN, dtype=np.int32)
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size != n:
        raise MdprError(f"Got {n} feature rows but {arr.size} {name}; pass one per row (-1 when unknown).")
    return arr.astype(np.int32)


def _write_file_atomic(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[_Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
) -> int:
    """Write a complete store to a temporary file, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        n = _write_file(tmp, meta, blocks, failed=failed, created=created, complete=complete)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return n


def _write_file(
    path: Path,
    meta: StoreMeta,
    blocks: Iterable[_Rows],
    *,
    failed: List[Tuple[str, str]],
    created: str,
    complete: bool,
) -> int:
    chunk = chunk_rows_for(meta.dim, meta.dtype)
    str_dtype = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", libver=_LIBVER) as h5:
        a = h5.attrs
        a["format"] = STORE_FORMAT
        a["schema_version"] = SCHEMA_VERSION
        a["mdpr_version"] = __version__
        a["model_fingerprint"] = meta.fingerprint
        a["model_config"] = json.dumps(meta.model_config, sort_keys=True)
        a["preprocessing"] = json.dumps(meta.preprocessing, sort_keys=True)
        a["normalized"] = bool(meta.normalized)
        a["flip"] = bool(meta.flip)
        a["root"] = meta.root or ""
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
            paths[n : n + m] = np.array(rows.paths, dtype=object)
            pids[n : n + m] = rows.pids
            camids[n : n + m] = rows.camids
            n += m
        a["failed_images"] = json.dumps([{"path": p, "reason": r} for p, r in failed])
        a["complete"] = bool(complete)
        a["updated"] = _now()
    return n


def _coalesce(blocks: Iterable[_Rows], target: int) -> Iterator[_Rows]:
    """Merge small blocks (journal batches) into blocks of about ``target`` rows to write efficiently."""
    pending: List[_Rows] = []
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


def _concat(parts: List[_Rows]) -> _Rows:
    if len(parts) == 1:
        return parts[0]
    return _Rows(
        features=np.concatenate([p.features for p in parts]),
        paths=[s for p in parts for s in p.paths],
        pids=np.concatenate([p.pids for p in parts]),
        camids=np.concatenate([p.camids for p in parts]),
    )


# ----------------------------------------------------------------------------------------------------- journal


@dataclass
class _Record:
    offset: int  # of the payload
    length: int
    rows: int
    paths: List[str] = field(default_factory=list)
    failed: List[Any] = field(default_factory=list)


class _Journal:
    """Append-only file of CRC-checked batches; a torn tail (killed mid-write, power cut) is dropped on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        self._locked = False
        self.header: Optional[Dict[str, Any]] = None
        self.records: List[_Record] = []
        self.end = 0
        self._last_sync = time.monotonic()

    def lock(self) -> bool:
        """Take an exclusive lock (released by the OS if the process dies); False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; concurrent writers are the user's responsibility
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._locked = True
        return True

    def scan(self) -> None:
        """Read the header and every complete record; remember where the valid part ends."""
        size = os.fstat(self.fd).st_size
        self.header, self.records, self.end = None, [], 0
        head = _pread(self.fd, len(_JOURNAL_MAGIC) + _U32.size, 0)
        if len(head) < len(_JOURNAL_MAGIC) + _U32.size or head[: len(_JOURNAL_MAGIC)] != _JOURNAL_MAGIC:
            return
        (hlen,) = _U32.unpack_from(head, len(_JOURNAL_MAGIC))
        pos = len(head)
        body = _pread(self.fd, hlen + _U32.size, pos)
        if len(body) < hlen + _U32.size or zlib.crc32(body[:hlen]) != _U32.unpack_from(body, hlen)[0]:
            return
        self.header = json.loads(body[:hlen].decode("utf-8"))
        pos += hlen + _U32.size
        self.end = pos
        while pos + _RECORD_HEADER.size <= size:
            magic, length, crc = _RECORD_HEADER.unpack(_pread(self.fd, _RECORD_HEADER.size, pos))
            start = pos + _RECORD_HEADER.size
            if magic != _RECORD_MAGIC or start + length > size:
                break
            payload = _pread(self.fd, length, start)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            (jlen,) = _U32.unpack_from(payload, 0)
            info = json.loads(payload[_U32.size : _U32.size + jlen].decode("utf-8"))
            self.records.append(_Record(start, length, len(info["paths"]), info["paths"], info.get("failed", [])))
            pos = start + length
            self.end = pos

    def reset(self, header: Dict[str, Any]) -> None:
        """Start over with only a header (after a fold, or when the old content was unusable)."""
        data = json.dumps(header, sort_keys=True).encode("utf-8")
        blob = _JOURNAL_MAGIC + _U32.pack(len(data)) + data + _U32.pack(zlib.crc32(data))
        # Forget the old records first: if this is interrupted, memory must not point into a cut file.
        self.header, self.records, self.end = None, [], 0
        os.ftruncate(self.fd, 0)
        _pwrite_all(self.fd, blob, 0)
        os.fsync(self.fd)
        self.header, self.records, self.end = header, [], len(blob)

    def truncate_tail(self) -> None:
        if os.fstat(self.fd).st_size != self.end:
            os.ftruncate(self.fd, self.end)
            os.fsync(self.fd)

    def append(self, info: Dict[str, Any], features: np.ndarray, fsync_interval: float) -> None:
        meta = json.dumps(info).encode("utf-8")
        little = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<"))
        payload = b"".join((_U32.pack(len(meta)), meta, little.tobytes()))
        blob = _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        _pwrite_all(self.fd, blob, self.end)
        self.records.append(_Record(self.end + _RECORD_HEADER.size, len(payload), len(info["paths"]), info["paths"],
                                    info.get("failed", [])))
        self.end += len(blob)
        now = time.monotonic()
        if now - self._last_sync >= fsync_interval:
            os.fsync(self.fd)
            self._last_sync = now

    def read(self, record: _Record, meta: StoreMeta) -> Tuple[Dict[str, Any], np.ndarray]:
        payload = _pread(self.fd, record.length, record.offset)
        (jlen,) = _U32.unpack_from(payload, 0)
        info = json.loads(payload[_U32.size : _U32.size + jlen].decode("utf-8"))
        feats = np.frombuffer(payload, dtype=np.dtype(meta.dtype).newbyteorder("<"), offset=_U32.size + jlen)
        return info, feats.reshape(record.rows, meta.dim).astype(meta.dtype)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self, delete: bool) -> None:
        if self.fd < 0:
            return
        if delete:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # also releases the lock
        self.fd = -1


def _pread(fd: int, length: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: one thread uses the journal, so seek + read is safe
    return os.read(fd, length)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view = view[written:]
        offset += written


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._journal = self._open_journal()
        try:
            self._open(meta)
        except BaseException:
            self._journal.close(delete=False)
            raise

    def _open_journal(self) -> _Journal:
        jpath = journal_path_for(self.path)
        for _ in range(5):
            journal = _Journal(jpath)
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
        for stale in self.path.parent.glob(f"{self.path.name}.tmp-*"):  # a fold killed half-way
            with contextlib.suppress(OSError):
                stale.unlink()
        self.keys: Set[str] = set()
        self.failed: Dict[str, str] = {}
        if self.path.exists():
            with FeatureStore.open(self.path) as store:
                store.meta.check_compatible(meta, str(self.path))
                # The stored description wins (root, created, config) so resuming never changes it.
                self.meta = store.meta
                self.created = store.created or _now()
                self.stored_rows = len(store)
                self.complete = store.complete
                for start in range(0, self.stored_rows, 1 << 16):
                    self.keys.update(store._h5["paths"].asstr()[start : start + (1 << 16)])
                self.failed = dict(store.failed)
        else:
            self.meta = meta
            self.created = _now()
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
        rows = _validated_rows(self.meta, features, list(paths), pids, camids)
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

        def blocks() -> Iterator[_Rows]:
            if self.path.exists():
                with FeatureStore.open(self.path) as old:
                    n = len(old)
                    step = old.default_chunk_rows(old.dtype)
                    for start in range(0, n, step):
                        stop = min(n, start + step)
                        paths = list(old._h5["paths"].asstr()[start:stop])
                        stored_keys.update(paths)
                        yield _Rows(
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
                yield _Rows(
                    features=feats[idx],
                    paths=[info["paths"][i] for i in keep],
                    pids=np.asarray(info["pids"], dtype=np.int32)[idx],
                    camids=np.asarray(info["camids"], dtype=np.int32)[idx],
                )

        self.stored_rows = _write_file_atomic(
            self.path, self.meta, blocks(), failed=failed, created=self.created, complete=complete
        )
        self.complete = complete
        self._last_fold = time.monotonic()


__all__ = [
    "CHUNK_BYTES",
    "SCHEMA_VERSION",
    "STORE_FORMAT",
    "UNKNOWN",
    "FeatureStore",
    "StoreMeta",
    "StoreWriter",
    "chunk_rows_for",
    "journal_path_for",
    "l2_normalize",
    "path_key",
    "write_store",
]
