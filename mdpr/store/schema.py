"""What a store is: its constants, the metadata that says what its rows mean, and the row checks.

Every other module of :mod:`mdpr.store` builds on this one; it touches no file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Union

import numpy as np

from mdpr.errors import MdprError
from mdpr.runtime import l2_normalize

PathLike = Union[str, "os.PathLike[str]"]

#: Identifies an mdpr store among HDF5 files.
STORE_FORMAT = "mdpr-feature-store"
#: Version of the layout (``docs/feature-store.md``); bump when readers would misread a newer file.
SCHEMA_VERSION = 1
#: Feature chunks are about this many bytes (a row block covering every column).
CHUNK_BYTES = 1 << 20
#: Blocks read or copied at once, in bytes (bounded memory).
BLOCK_BYTES = 64 << 20
#: pid / camid of a row whose identity or camera is not known.
UNKNOWN = -1
#: The storage precisions a store may use.
DTYPES = ("float32", "float16")
#: The row datasets every store holds, in this order.
DATASETS = ("features", "paths", "pids", "camids")
# v108 at least so that large attributes (a long failed-images list) are allowed; at most v110 so
# HDF5 1.10 tools can still read the files.
LIBVER = ("v108", "v110")


def now() -> str:
    """The current UTC time as the stores record it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class _Fingerprinted(Protocol):
    @property
    def fingerprint(self) -> str: ...


def check_same_weights(
    store: _Fingerprinted,
    fingerprint: str,
    weights_label: str,
    *,
    store_label: Optional[str] = None,
    allow_unknown: bool = False,
) -> None:
    """The one rule "the weights must be the ones that made the store": raise one :class:`MdprError` sentence if not.

    ``store`` is a :class:`~mdpr.store.FeatureStore` (or a :class:`StoreMeta`, or anything with a
    ``fingerprint``); ``fingerprint`` is the fingerprint of the weights (or of a second store) that
    ``store``'s rows are about to be compared with, and ``weights_label`` says what it belongs to
    ("the weights model.pt", "the weights of the query store q.h5"; plural, it
    opens the sentence). ``store_label`` names the store in the message
    (default: its ``path``). With ``allow_unknown``, a missing fingerprint on either side (stores
    written by other tools) is accepted.
    """
    own = str(store.fingerprint or "")
    other = str(fingerprint or "")
    if own == other or (allow_unknown and not (own and other)):
        return
    label = store_label or str(getattr(store, "path", "the feature store"))
    raise MdprError(
        f"{weights_label[:1].upper()}{weights_label[1:]} (fingerprint {other[:16] or 'none'}) are not the ones that "
        f"made {label}, which holds features of other weights (fingerprint {own[:16] or 'none'}); use the same "
        "weights for both, or extract a new store with these weights."
    )


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
    weights: str = ""  #: absolute path of the checkpoint that made the rows (``mdpr query`` defaults to it)
    backend: str = "torch"  #: inference backend that made the rows (torch, onnxruntime, openvino)
    precision: str = "fp32"  #: fp32 or int8 (INT8 rows are not comparable with fp32 rows unless allowed)

    def __post_init__(self) -> None:
        self.dim = int(self.dim)
        self.dtype = np.dtype(self.dtype).name
        if self.dtype not in DTYPES:
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
        check_same_weights(self, other.fingerprint, "these weights", store_label=where)
        if self.dim != other.dim:
            raise MdprError(f"{where} holds {self.dim}-d features, not {other.dim}-d; write to another store.")
        if self.flip != other.flip:
            said = "with" if self.flip else "without"
            raise MdprError(f"{where} was extracted {said} averaging over mirrored images (flip); use the same "
                            "option or another store.", keys=["flip"])
        if self.dtype != other.dtype:
            said = "float16 (half)" if self.dtype == "float16" else "float32 (no half)"
            raise MdprError(f"{where} stores {said} features; use the same precision or another store.", keys=["half"])
        if self.normalized != other.normalized:
            said = "L2-normalised" if self.normalized else "raw (not normalised)"
            raise MdprError(f"{where} stores {said} features; use the same setting or another store.")

    def to_json(self) -> Dict[str, Any]:
        return {**self.essentials(), "model_config": self.model_config, "preprocessing": self.preprocessing,
                "root": self.root, "weights": self.weights, "backend": self.backend, "precision": self.precision}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> StoreMeta:
        return cls(
            dim=data["dim"], dtype=data["dtype"], fingerprint=data["fingerprint"], normalized=data["normalized"],
            flip=data["flip"], model_config=data.get("model_config") or {},
            preprocessing=data.get("preprocessing") or {}, root=data.get("root"), weights=data.get("weights") or "",
            backend=data.get("backend") or "torch", precision=data.get("precision") or "fp32",
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


def journal_path_for(store_path: PathLike) -> Path:
    """The write-ahead journal of the store at ``store_path`` (``<store>.journal``)."""
    p = Path(store_path)
    return p.with_name(p.name + ".journal")


@dataclass
class Rows:
    """A block of rows on its way into a store file."""

    features: np.ndarray
    paths: List[Any]  #: str, or the stored bytes when a store is copied (``iter_rows(raw_paths=True)``)
    pids: np.ndarray
    camids: np.ndarray


def validated_rows(
    meta: StoreMeta,
    features: Any,
    paths: List[str],
    pids: Optional[Sequence[int]],
    camids: Optional[Sequence[int]],
) -> Rows:
    """Check a batch against ``meta`` and encode it (normalised when ``meta.normalized``, in the stored dtype)."""
    feats = np.asarray(features)
    if feats.ndim == 1 and feats.size == meta.dim:
        feats = feats.reshape(1, -1)
    if feats.ndim != 2 or feats.shape[1] != meta.dim:
        raise MdprError(f"Features must be an (N, {meta.dim}) array, got shape {feats.shape}.")
    n = feats.shape[0]
    if len(paths) != n:
        raise MdprError(f"Got {n} feature rows but {len(paths)} paths; pass one path per row.")
    paths = [str(p) for p in paths]
    for p in paths:
        check_path(p)
    _refuse_non_finite(feats, paths, "contain NaN or infinity", "check the model and its inputs")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, row by row
        feats = l2_normalize(feats) if meta.normalized else np.asarray(feats, dtype=np.float32)
        feats = feats.astype(meta.dtype, copy=False)
    _refuse_non_finite(feats, paths, f"do not fit {meta.dtype} (values beyond its range)",
                       "store float32 or normalised features")
    return Rows(
        features=feats,
        paths=paths,
        pids=_int_column(pids, n, "pids"),
        camids=_int_column(camids, n, "camids"),
    )


def check_path(path: str) -> None:
    """Refuse, in one sentence, a stored path that the store could not give back exactly.

    File names that are not valid UTF-8 arrive as Python's surrogate escapes (``os.fsdecode``) and are
    stored byte for byte, so they round-trip; a NUL (which ends a string in HDF5) or a lone surrogate
    that no file name produces cannot be stored.
    """
    if "\x00" in path:
        raise MdprError(f"Path {shown_path(path)} contains a NUL character, which no file name holds; pass real paths.")
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise MdprError(
            f"Path {shown_path(path)} contains a lone surrogate character that no file name decodes to; pass paths as "
            "Python decodes file names (os.fsdecode)."
        ) from None


def encode_path(path: str) -> bytes:
    """The bytes stored for a path: UTF-8, with the raw bytes of a name that is not valid UTF-8 kept as they are."""
    return path.encode("utf-8", "surrogateescape")


def shown_path(path: str) -> str:
    """``path`` as a message shows it: as is when printable text, else with escapes (never unprintable bytes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(path)[1:-1]
    return path if path.isprintable() else ascii(path)[1:-1]


def _refuse_non_finite(feats: np.ndarray, paths: List[str], problem: str, fix: str) -> None:
    if feats.size == 0 or (feats.dtype.kind == "f" and np.isfinite(feats).all()):
        return
    if feats.dtype.kind not in "fiub":
        raise MdprError(f"Features must be numbers, got an array of {feats.dtype}.")
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if bad.size == 0:
        return
    raise MdprError(
        f"{bad.size} of {len(paths)} feature rows {problem} (the first is {shown_path(paths[int(bad[0])])}), so "
        f"no row of this batch was stored; {fix}."
    )


def _int_column(values: Optional[Sequence[int]], n: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, UNKNOWN, dtype=np.int32)
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size != n:
        raise MdprError(f"Got {n} feature rows but {arr.size} {name}; pass one per row (-1 when unknown).")
    return arr.astype(np.int32)
