"""Reading a store: :class:`FeatureStore`, with memory-mapped scans of uncompressed chunks."""

from __future__ import annotations

import contextlib
import math
import mmap
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from mdpr import __version__
from mdpr.errors import MdprError
from mdpr.store.journal import has_records
from mdpr.store.schema import (
    BLOCK_BYTES,
    SCHEMA_VERSION,
    STORE_FORMAT,
    PathLike,
    StoreMeta,
    journal_path_for,
)
from mdpr.store.validation import (
    bool_attr,
    check_attributes,
    check_datasets,
    failed_list,
    int_attr,
    json_attr,
    scalar_attr,
    string_attr,
)


class FeatureStore:
    """A read-only view of a store file. Open with :meth:`open`; use as a context manager or :meth:`close`.

    Everything large is read lazily: :meth:`chunks` / :meth:`features` iterate in bounded blocks,
    :meth:`read_features` loads the matrix only when asked, :meth:`paths_at` reads selected paths.
    """

    def __init__(self, path: Path, h5: h5py.File) -> None:
        self.path = path
        self._h5 = h5
        datasets = check_datasets(path, h5)
        attrs = h5.attrs
        check_attributes(path, attrs)
        self.schema_version = int_attr(path, attrs, "schema_version")
        self.mdpr_version = string_attr(path, attrs, "mdpr_version")
        self.created = string_attr(path, attrs, "created")
        self.updated = string_attr(path, attrs, "updated")
        self.complete = bool_attr(path, attrs, "complete", True)
        self._features = datasets["features"]
        self.meta = StoreMeta(
            dim=int(self._features.shape[1]),
            dtype=self._features.dtype.name,
            fingerprint=string_attr(path, attrs, "model_fingerprint"),
            normalized=bool_attr(path, attrs, "normalized", False),
            flip=bool_attr(path, attrs, "flip", False),
            model_config=json_attr(path, attrs, "model_config"),
            preprocessing=json_attr(path, attrs, "preprocessing"),
            root=string_attr(path, attrs, "root") or None,
        )
        self.failed: List[Tuple[str, str]] = failed_list(path, attrs)
        self._n = int(self._features.shape[0])
        self._pids: Optional[np.ndarray] = None
        self._camids: Optional[np.ndarray] = None
        self._non_finite: Optional[np.ndarray] = None
        self._mapping: Any = None  # None: not tried yet; False: not mappable; else (mmap, chunk_rows, offsets)

    # -- opening
    @classmethod
    def open(cls, path: PathLike) -> FeatureStore:
        """Open an existing store for reading; :class:`MdprError` (one sentence) when it is not a sound one.

        Validated on opening (:mod:`mdpr.store.validation`): the row datasets' links, storage, shapes and
        dtypes, and every root attribute's type.
        """
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
            if scalar_attr(p, h5.attrs, "format") != STORE_FORMAT or "schema_version" not in h5.attrs:
                raise MdprError(
                    f"{p} is an HDF5 file but not an mdpr feature store (no format='{STORE_FORMAT}' attribute); "
                    "pass a file written by `mdpr extract`."
                )
            version = int_attr(p, h5.attrs, "schema_version")
            if version > SCHEMA_VERSION:
                raise MdprError(
                    f"Feature store {p} uses schema version {version}, newer than this mdpr ({__version__}) reads "
                    f"(up to {SCHEMA_VERSION}); upgrade mdpr."
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
        return has_records(self.journal_path)

    # -- rows
    @property
    def paths(self) -> List[str]:
        """All stored paths (as stored: relative to :attr:`root` when possible)."""
        return list(self._h5["paths"].asstr(errors="surrogateescape")[...])

    def paths_at(self, indices: Sequence[int]) -> List[str]:
        """Stored paths of the given rows, in the given order (reads only those rows)."""
        return _take(self._h5["paths"].asstr(errors="surrogateescape"), indices)

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

    def non_finite_rows(self) -> np.ndarray:
        """Sorted row numbers (int64) whose feature holds NaN or infinity; empty for a sound store.

        mdpr never writes such rows, but a store edited or written by another tool may hold them; search
        and evaluation exclude them (and say so). The first call scans the store once; the answer is kept.
        """
        if self._non_finite is None:
            found = [start + np.flatnonzero(~np.isfinite(block).all(axis=1)) for start, block in self.scan()]
            self._non_finite = np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)
        return self._non_finite

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


def _take(dataset: Any, indices: Union[Sequence[int], np.ndarray]) -> List[Any]:
    """``dataset[indices]`` for any order / duplicates (h5py wants sorted unique indices)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return []
    uniq, inverse = np.unique(idx, return_inverse=True)
    values = dataset[uniq.tolist()] if uniq.size > 1 else dataset[int(uniq[0]) : int(uniq[0]) + 1]
    return [values[i] for i in inverse]
