"""Reading a store: :class:`FeatureStore`, one logical store over one file or over immutable segments.

A store is either a single HDF5 file or, once rows have been appended, a small *master* file whose row
datasets are HDF5 virtual datasets over segment files in ``<store>.segments/`` (each segment a
complete single-file store). Plain HDF5 readers see one logical store either way; this reader opens
the segment files itself (validating each), so it never depends on HDF5's silent fill values for a
missing source, and memory-maps each segment's uncompressed chunks for scans.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import sys
from dataclasses import dataclass
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
    Rows,
    StoreMeta,
    journal_path_for,
)
from mdpr.store.validation import (
    bool_attr,
    check_attributes,
    check_datasets,
    damaged,
    failed_list,
    history_list,
    int_attr,
    json_attr,
    scalar_attr,
    segment_bounds,
    string_attr,
)


@dataclass(frozen=True)
class Segment:
    """One physical file of a store: its rows ``[start, start + rows)`` of the logical store."""

    path: Path
    start: int
    rows: int


class _Part:
    """The row datasets of one physical file, read with local row numbers."""

    def __init__(self, path: Path, h5: h5py.File, datasets: Dict[str, h5py.Dataset], start: int) -> None:
        self.path = path
        self.h5 = h5
        self.features = datasets["features"]
        self.paths = datasets["paths"]
        self.pids = datasets["pids"]
        self.camids = datasets["camids"]
        self.start = start
        self.n = int(self.features.shape[0])
        self.dim = int(self.features.shape[1])
        self.dtype = self.features.dtype
        self._mapping: Any = None  # None: not tried yet; False: not mappable; else (mmap, chunk_rows, offsets)
        self._chunk_offsets: Optional[np.ndarray] = None  # the offsets as an array, for gathers
        self._rows_at: Optional[np.ndarray] = None  # the map viewed as overlapping rows, one per byte (see rows)

    def unmap(self) -> None:
        self._rows_at = None  # the map's only view held here: unmapping needs it gone
        if self._mapping:
            with contextlib.suppress(BufferError):  # a caller still holds a view: the GC unmaps it later
                self._mapping[0].close()
        self._mapping = False

    def close(self) -> None:
        self.unmap()
        self.h5.close()

    def str_paths(self) -> Any:
        return self.paths.asstr(errors="surrogateescape")

    def rows(self, idx: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Features of local rows ``idx`` (any order, repeats allowed)."""
        mapped = self.mapped()
        if mapped is None:
            return np.asarray(_take(self.features, idx), dtype=dtype).reshape(-1, self.dim)
        mm, chunk_rows, offsets = mapped
        row_bytes = self.dim * self.dtype.itemsize
        if self._chunk_offsets is None:
            self._chunk_offsets = np.asarray(offsets, dtype=np.int64)
        rows = np.asarray(idx, dtype=np.int64).reshape(-1)
        starts = self._chunk_offsets[rows // chunk_rows] + (rows % chunk_rows) * row_bytes
        # Row r's bytes start at starts[r], anywhere in the map (HDF5 places chunks at any byte): a view whose
        # i-th "row" is the row_bytes bytes from byte i gathers a whole shortlist in one fancy index, made once
        if self._rows_at is None:
            octets = np.frombuffer(mm, dtype=np.uint8)
            self._rows_at = np.lib.stride_tricks.as_strided(octets, shape=(len(mm) - row_bytes + 1, row_bytes),
                                                             strides=(1, 1), writeable=False)
        return self._rows_at[starts].view(self.dtype).astype(dtype, copy=False)

    def scan(self, block_bytes: int, prefetch_bytes: int) -> Iterator[Tuple[int, np.ndarray]]:
        mapped = self.mapped()
        if mapped is None:
            step = max(1, BLOCK_BYTES // (self.dim * self.dtype.itemsize))
            for start in range(0, self.n, step):
                yield start, np.asarray(self.features[start : min(self.n, start + step)])
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
            n = min(count * chunk_rows, self.n - start)
            yield start, np.frombuffer(mm, dtype=self.dtype, count=n * self.dim, offset=offsets[first]).reshape(n, self.dim)

    def mapped(self) -> Optional[Tuple[mmap.mmap, int, List[int]]]:
        """``(memory map of the file, rows per chunk, byte offset of each chunk)``, or None when not mappable."""
        if self._mapping is None:
            self._mapping = False
            layout = self.chunk_layout()
            if layout is not None:
                try:
                    with open(self.path, "rb") as fh:
                        # Copy-on-write: the views are writable numpy arrays (torch takes them without a
                        # warning) and nothing written to them could ever reach the file.
                        self._mapping = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), *layout)
                except (OSError, ValueError):
                    self._mapping = False
        return self._mapping or None

    def chunk_layout(self) -> Optional[Tuple[int, List[int]]]:
        """``(rows per chunk, byte offset of each chunk in row order)`` when every chunk can be mapped directly."""
        d = self.features
        if self.n == 0 or d.is_virtual or d.chunks is None or d.chunks[1] != self.dim:
            return None
        if d.compression or d.shuffle or d.fletcher32 or d.scaleoffset is not None:
            return None
        if d.dtype.byteorder not in ("=", "<", "|") or sys.byteorder != "little":
            return None
        chunk_rows = int(d.chunks[0])
        chunk_bytes = chunk_rows * self.dim * self.dtype.itemsize
        expected = math.ceil(self.n / chunk_rows)
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


class FeatureStore:
    """A read-only view of a store. Open with :meth:`open`; use as a context manager or :meth:`close`.

    Everything large is read lazily: :meth:`chunks` / :meth:`features` iterate in bounded blocks,
    :meth:`read_features` loads the matrix only when asked, :meth:`paths_at` reads selected paths.
    :attr:`version_stamp` identifies the rows: it changes whenever rows are added.
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
        features = datasets["features"]
        self.meta = StoreMeta(
            dim=int(features.shape[1]),
            dtype=features.dtype.name,
            fingerprint=string_attr(path, attrs, "model_fingerprint"),
            normalized=bool_attr(path, attrs, "normalized", False),
            flip=bool_attr(path, attrs, "flip", False),
            model_config=json_attr(path, attrs, "model_config"),
            preprocessing=json_attr(path, attrs, "preprocessing"),
            root=string_attr(path, attrs, "root") or None,
            weights=string_attr(path, attrs, "weights"),
            backend=string_attr(path, attrs, "backend") or "torch",
            precision=string_attr(path, attrs, "precision") or "fp32",
        )
        self.failed: List[Tuple[str, str]] = failed_list(path, attrs)
        self._n = int(features.shape[0])
        self._stamp = string_attr(path, attrs, "version_stamp")
        self._history = history_list(path, attrs)
        self._parts: List[_Part] = []
        self._segmented = bool(features.is_virtual)
        try:
            if self._segmented:
                self._open_segments(datasets)
            else:
                self._parts = [_Part(path, h5, datasets, 0)]
        except BaseException:
            self._close_segments()
            raise
        self._starts = np.array([p.start for p in self._parts], dtype=np.int64)
        self._pids: Optional[np.ndarray] = None
        self._camids: Optional[np.ndarray] = None
        self._non_finite: Optional[np.ndarray] = None

    def _open_segments(self, datasets: Dict[str, h5py.Dataset]) -> None:
        bounds = segment_bounds(self.path, datasets, self._n)
        for seg_path, start, rows in bounds:
            try:
                seg = h5py.File(seg_path, "r")
            except OSError as exc:
                raise damaged(self.path, f"its segment {seg_path.name} cannot be opened ({exc})") from None
            try:
                seg_sets = check_datasets(seg_path, seg)
                if any(ds.is_virtual for ds in seg_sets.values()):
                    raise damaged(self.path, f"its segment {seg_path.name} is itself virtual")
                feats = seg_sets["features"]
                if int(feats.shape[0]) != rows or feats.shape[1] != self.meta.dim or feats.dtype != self.dtype:
                    raise damaged(self.path, f"its segment {seg_path.name} holds {feats.shape} {feats.dtype} features "
                                             f"where the store maps {rows} rows of {self.meta.dim} {self.meta.dtype}")
            except BaseException:
                seg.close()
                raise
            self._parts.append(_Part(seg_path, seg, seg_sets, start))

    def _close_segments(self) -> None:
        for part in self._parts:
            if part.h5 is not self._h5:
                part.close()

    # -- opening
    @classmethod
    def open(cls, path: PathLike) -> FeatureStore:
        """Open an existing store for reading; :class:`MdprError` (one sentence) when it is not a sound one.

        Validated on opening (:mod:`mdpr.store.validation`): the row datasets' links, storage, shapes and
        dtypes, every root attribute's type, and for a segmented store each segment file.
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
        for part in self._parts:
            if part.h5 is not self._h5:
                part.close()
            else:
                part.unmap()
        self._h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, rows={self._n}, dim={self.dim}, dtype={self.meta.dtype}, "
                f"normalized={self.normalized}, fingerprint={self.fingerprint[:12]!r}, segments={len(self._parts)})")

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
    def weights(self) -> str:
        """The checkpoint that made the rows ("" for stores of earlier versions or other tools)."""
        return self.meta.weights

    @property
    def journal_path(self) -> Path:
        return journal_path_for(self.path)

    @property
    def has_pending_journal(self) -> bool:
        """True when an interrupted extraction left rows that are not folded into this file yet."""
        return has_records(self.journal_path)

    # -- versions and layout
    @property
    def version_stamp(self) -> str:
        """An identifier of exactly these rows: it changes whenever rows are added, and only then.

        Rewrites that keep the rows (``mdpr store compact``, a change of the ``complete`` flag) keep it.
        Stores written before stamps existed get one derived from their creation and update times.
        """
        if self._stamp:
            return self._stamp
        text = f"{self.created}|{self.updated}|{self._n}|{self.fingerprint}"
        return "legacy-" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]

    @property
    def history(self) -> List[Tuple[int, str]]:
        """``(rows, version_stamp)`` of earlier versions whose rows are the first rows of this one, oldest first."""
        return list(self._history)

    def extends(self, rows: int, stamp: str) -> bool:
        """True when the version ``stamp`` of ``rows`` rows is this store or a prefix of it (rows only added since)."""
        return (rows == self._n and stamp == self.version_stamp) or (int(rows), str(stamp)) in self._history

    @property
    def segments(self) -> List[Segment]:
        """The physical files behind the rows, in row order (one for a single-file store)."""
        return [Segment(p.path, p.start, p.n) for p in self._parts]

    @property
    def layout(self) -> str:
        """``"single"`` (one HDF5 file) or ``"segments"`` (a master file over segment files)."""
        return "segments" if self._segmented else "single"

    # -- rows
    @property
    def paths(self) -> List[str]:
        """All stored paths (as stored: relative to :attr:`root` when possible)."""
        out: List[str] = []
        for part in self._parts:
            out.extend(part.str_paths()[...])
        return out

    def paths_at(self, indices: Sequence[int]) -> List[str]:
        """Stored paths of the given rows, in the given order (reads only those rows)."""
        idx = self._check_rows(indices)
        out: List[Any] = [None] * idx.size
        for part, sel, local in self._split(idx):
            for i, value in zip(sel.tolist(), _take(part.str_paths(), local)):
                out[i] = value
        return out

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
            self._pids = self._column("pids")
        return self._pids

    @property
    def camids(self) -> np.ndarray:
        """(N,) int32, 0-based, -1 when unknown."""
        if self._camids is None:
            self._camids = self._column("camids")
        return self._camids

    def _column(self, name: str) -> np.ndarray:
        parts = [np.asarray(getattr(p, name)[...], dtype=np.int32) for p in self._parts]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

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
            yield start, self._range(start, min(self._n, start + rows), np.dtype(dtype))

    def features(self, chunk_rows: Optional[int] = None, dtype: Any = np.float32) -> Iterator[np.ndarray]:
        """Yield the feature matrix block by block (bounded memory), in row order."""
        for _, block in self.chunks(chunk_rows, dtype):
            yield block

    def read_features(self, dtype: Any = None, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """The whole (N, D) matrix (or the given rows, in the given order) in memory; dtype defaults to the stored one."""
        dtype = np.dtype(dtype or self.dtype)
        if rows is not None:
            idx = self._check_rows(rows)
            out = np.empty((idx.size, self.dim), dtype=dtype)
            for part, sel, local in self._split(idx):
                out[sel] = part.rows(local, dtype)
            return out
        out = np.empty((self._n, self.dim), dtype=dtype)
        step = self.default_chunk_rows(self.dtype)
        for part in self._parts:
            for start in range(0, part.n, step):
                stop = min(part.n, start + step)
                if dtype == self.dtype:
                    part.features.read_direct(out, np.s_[start:stop], np.s_[part.start + start : part.start + stop])
                else:
                    out[part.start + start : part.start + stop] = part.features[start:stop]
        return out

    def scan(self, block_bytes: int = 32 << 20, prefetch_bytes: int = 32 << 20) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` in row order as zero-copy views in the stored dtype (do not modify them).

        The fastest way through the whole matrix: uncompressed chunks are memory-mapped, runs of chunks
        that lie back to back in a file are served as one block of up to ``block_bytes``, and the
        kernel is asked to read ``prefetch_bytes`` ahead (``MADV_WILLNEED``) so that disk reads overlap
        with the caller's compute. Blocks never span two segments. Falls back to ordinary HDF5 reads
        when the layout does not allow mapping.
        """
        for part in self._parts:
            for start, block in part.scan(block_bytes, prefetch_bytes):
                yield part.start + start, block

    def iter_rows(self, block_rows: Optional[int] = None, start: int = 0, raw_paths: bool = False) -> Iterator[Rows]:
        """The rows from ``start`` on, in order, as blocks of (features in the stored dtype, paths, pids, camids).

        For copying stores; segments before ``start`` are not read. ``raw_paths`` gives the paths as the
        stored bytes (no decoding: the fastest copy).
        """
        block_bytes = int(block_rows or self.default_chunk_rows(self.dtype)) * self.dim * self.dtype.itemsize
        for part in self._parts:
            if part.start + part.n <= start:
                continue
            first = max(0, start - part.start)
            # scan(): memory-mapped chunks where possible, the cheapest read of the features
            for lo, block in part.scan(block_bytes, block_bytes):
                hi = lo + len(block)
                if hi <= first:
                    continue
                cut = max(0, first - lo)
                lo += cut
                yield Rows(
                    features=block[cut:],
                    paths=list(part.paths[lo:hi] if raw_paths else part.str_paths()[lo:hi]),
                    pids=np.asarray(part.pids[lo:hi], dtype=np.int32),
                    camids=np.asarray(part.camids[lo:hi], dtype=np.int32),
                )

    def _chunk_layout(self) -> Optional[Tuple[int, List[int]]]:
        """The first file's mappable chunk layout (see :meth:`_Part.chunk_layout`), for tests and tools."""
        return self._parts[0].chunk_layout() if self._parts else None

    def _check_rows(self, rows: Union[Sequence[int], np.ndarray]) -> np.ndarray:
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"row index out of range for a store of {self._n} rows")
        return idx

    def _split(self, idx: np.ndarray) -> Iterator[Tuple[_Part, np.ndarray, np.ndarray]]:
        """``(part, positions in idx, local rows)`` for each part that holds some of the rows ``idx``."""
        if idx.size == 0:
            return
        owner = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(owner).tolist():
            sel = np.flatnonzero(owner == k)
            part = self._parts[k]
            yield part, sel, idx[sel] - part.start

    def _range(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
        out = np.empty((stop - start, self.dim), dtype=dtype)
        for part in self._parts:
            lo, hi = max(start, part.start), min(stop, part.start + part.n)
            if lo < hi:
                out[lo - start : hi - start] = part.features[lo - part.start : hi - part.start]
        return out


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
