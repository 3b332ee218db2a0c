"""Checks a store file must pass before its rows are trusted (run by :meth:`FeatureStore.open`).

A store comes from disk, possibly from another tool or another person, so nothing in it is assumed:
each row dataset must be a real dataset inside the store's own files (no external, soft or
user-defined links, no external raw storage, no virtual dataset whose sources lie outside the
store's segment folder), with the documented rank, dtype kind and row count, and every root
attribute must be a single value of the documented type. Each violation is one
:class:`~mdpr.errors.MdprError` sentence naming the store and the object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

from mdpr.errors import MdprError
from mdpr.store.schema import DATASETS, DTYPES

#: Root attributes and the kind of single value each must hold.
STRING_ATTRS = ("format", "mdpr_version", "model_fingerprint", "root", "created", "updated", "version_stamp",
                "weights", "backend", "precision")
JSON_ATTRS = {"model_config": dict, "preprocessing": dict, "failed_images": list, "history": list}
BOOL_ATTRS = ("normalized", "flip", "complete")
INT_ATTRS = ("schema_version",)

_RECREATE = "re-create it with `mdpr extract`"


def segments_dir_for(store_path: Path) -> Path:
    """The folder of a store's segment files (``<store>.segments``)."""
    return store_path.with_name(store_path.name + ".segments")


def damaged(path: Path, what: str) -> MdprError:
    return MdprError(f"Feature store {path} is damaged: {what}; {_RECREATE}.")


def scalar_attr(path: Path, attrs: Any, name: str) -> Any:
    """The attribute ``name`` as a plain Python value (None when absent); refuse arrays and odd types."""
    if name not in attrs:
        return None
    try:
        value = attrs[name]
    except (OSError, TypeError, ValueError) as exc:  # an HDF5 type h5py cannot read (compound, reference...)
        raise damaged(path, f"attribute '{name}' cannot be read ({exc})") from None
    if isinstance(value, np.ndarray):
        if value.shape not in ((), (1,)) or value.dtype.kind == "O" and value.size != 1:
            raise damaged(path, f"attribute '{name}' is an array of shape {value.shape}, not a single value")
        value = value.reshape(-1)[0] if value.shape == (1,) else value[()]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        value = value.item()
    return value


def string_attr(path: Path, attrs: Any, name: str, default: str = "") -> str:
    value = scalar_attr(path, attrs, name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise damaged(path, f"attribute '{name}' is {_kind(value)}, not a string")
    return value


def bool_attr(path: Path, attrs: Any, name: str, default: bool) -> bool:
    value = scalar_attr(path, attrs, name)
    if value is None:
        return default
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise damaged(path, f"attribute '{name}' is {_kind(value)}, not true or false")


def int_attr(path: Path, attrs: Any, name: str) -> int:
    value = scalar_attr(path, attrs, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise damaged(path, f"attribute '{name}' is {_kind(value)}, not an integer")
    return value


def json_attr(path: Path, attrs: Any, name: str) -> Any:
    """A JSON attribute decoded and checked against its documented top-level type (its default when absent)."""
    kind = JSON_ATTRS[name]
    raw = scalar_attr(path, attrs, name)
    if raw is None:
        return kind()
    if not isinstance(raw, str):
        raise damaged(path, f"attribute '{name}' is {_kind(raw)}, not a JSON string")
    try:
        value = json.loads(raw)
    except ValueError:
        raise damaged(path, f"attribute '{name}' is not valid JSON") from None
    if not isinstance(value, kind):
        raise damaged(path, f"attribute '{name}' holds {_kind(value)}, not a JSON {'object' if kind is dict else 'list'}")
    return value


def failed_list(path: Path, attrs: Any) -> List[Tuple[str, str]]:
    items = json_attr(path, attrs, "failed_images")
    out: List[Tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise damaged(path, "attribute 'failed_images' holds an entry without a string 'path'")
        out.append((item["path"], str(item.get("reason", ""))))
    return out


def history_list(path: Path, attrs: Any) -> List[Tuple[int, str]]:
    out: List[Tuple[int, str]] = []
    for item in json_attr(path, attrs, "history"):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], str)):
            raise damaged(path, "attribute 'history' holds an entry that is not [rows, stamp]")
        out.append((item[0], item[1]))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"a {type(value).__name__}"


def check_attributes(path: Path, attrs: Any) -> None:
    """Every documented root attribute that is present has the documented kind of single value."""
    for name in STRING_ATTRS:
        string_attr(path, attrs, name)
    for name in BOOL_ATTRS:
        bool_attr(path, attrs, name, False)
    for name in JSON_ATTRS:
        json_attr(path, attrs, name)
    failed_list(path, attrs)
    history_list(path, attrs)


def check_datasets(path: Path, h5: h5py.File) -> Dict[str, h5py.Dataset]:
    """The four row datasets, each a safe, well-formed dataset of this store; return them by name."""
    out: Dict[str, h5py.Dataset] = {}
    missing = [n for n in DATASETS if h5.get(n, getlink=True) is None]
    if missing:
        raise damaged(path, f"dataset(s) {', '.join(missing)} missing")
    for name in DATASETS:
        link = h5.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise MdprError(
                f"Feature store {path} is unsafe: '{name}' is an external link to {link.filename}:{link.path}, and "
                f"mdpr reads only data inside a store's own files; {_RECREATE}."
            )
        if not isinstance(link, h5py.HardLink):
            raise MdprError(
                f"Feature store {path} is unsafe: '{name}' is a {type(link).__name__} rather than a dataset of the "
                f"store itself, and mdpr follows no links in stores; {_RECREATE}."
            )
        obj = h5.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise damaged(path, f"'{name}' is a {type(obj).__name__}, not a dataset")
        if obj.external:
            raise MdprError(
                f"Feature store {path} is unsafe: the data of '{name}' lies in external raw file(s) "
                f"({', '.join(str(e[0]) for e in obj.external)}), and mdpr reads only data inside a store's own "
                f"files; {_RECREATE}."
            )
        if obj.is_virtual:
            check_virtual_sources(path, name, obj)
        out[name] = obj
    features = out["features"]
    if features.ndim != 2 or features.shape[1] < 1:
        raise damaged(path, f"'features' has shape {features.shape}, not (rows, dim)")
    if features.dtype.name not in DTYPES or features.dtype.byteorder not in ("=", "<", "|"):
        dt = features.dtype.str if features.dtype.name in DTYPES else features.dtype.name
        raise damaged(path, f"'features' holds {dt} values; mdpr stores hold little-endian float32 or float16")
    n = int(features.shape[0])
    for name in ("paths", "pids", "camids"):
        ds = out[name]
        if ds.ndim != 1:
            raise damaged(path, f"'{name}' has shape {ds.shape}, not one value per row")
        if int(ds.shape[0]) != n:
            raise damaged(path, f"'{name}' has {ds.shape[0]} rows but 'features' has {n}")
    if h5py.check_string_dtype(out["paths"].dtype) is None:
        raise damaged(path, f"'paths' holds {out['paths'].dtype} values, not strings")
    for name in ("pids", "camids"):
        if out[name].dtype.kind not in "iu":
            raise damaged(path, f"'{name}' holds {out[name].dtype} values, not integers")
    return out


def check_virtual_sources(path: Path, name: str, dataset: h5py.Dataset) -> List[Path]:
    """A virtual dataset may only map segment files of this very store; return the files it maps."""
    folder = segments_dir_for(path.absolute())
    files: List[Path] = []
    for source in dataset.virtual_sources():
        target = _resolve_source(path, source.file_name)
        if target is None or target.parent != folder or target.is_symlink():
            raise MdprError(
                f"Feature store {path} is unsafe: '{name}' is a virtual dataset over {source.file_name}, which is not "
                f"one of the store's own segment files (in {folder.name}/), and mdpr reads only data inside a "
                f"store's own files; {_RECREATE}."
            )
        if not target.is_file():
            raise damaged(path, f"its segment file {target.name} (in {folder.name}/) is missing")
        if source.dset_name.lstrip("/") != name:
            raise damaged(path, f"'{name}' maps dataset '{source.dset_name}' of segment {target.name}")
        files.append(target)
    return files


def segment_bounds(path: Path, datasets: Dict[str, h5py.Dataset], n: int) -> List[Tuple[Path, int, int]]:
    """``(segment file, first row, rows)`` of a segmented store, checked: the four row datasets map the same
    segments in the same row ranges, back to back from row 0 to row ``n``."""
    layouts = []
    for name in DATASETS:
        ds = datasets[name]
        if not ds.is_virtual:
            raise damaged(path, f"'features' is virtual but '{name}' is not")
        files = check_virtual_sources(path, name, ds)
        ranges = []
        for target, source in zip(files, ds.virtual_sources()):
            try:
                blocks = source.vspace.get_select_hyper_blocklist()
            except (ValueError, RuntimeError):
                raise damaged(path, f"'{name}' maps segment {target.name} in a way mdpr does not write") from None
            if len(blocks) != 1:
                raise damaged(path, f"'{name}' maps segment {target.name} to several row ranges")
            ranges.append((target, int(blocks[0][0][0]), int(blocks[0][1][0]) + 1))
        layouts.append(sorted(ranges, key=lambda r: r[1]))
    first = layouts[0]
    if any(other != first for other in layouts[1:]):
        raise damaged(path, "its row datasets map different segments")
    out: List[Tuple[Path, int, int]] = []
    expected = 0
    for target, start, stop in first:
        if start != expected:
            raise damaged(path, f"its segments leave rows {expected}..{start - 1} unmapped or map them twice")
        out.append((target, start, stop - start))
        expected = stop
    if expected != n:
        raise damaged(path, f"its segments map {expected} rows where the store has {n}")
    return out


def _resolve_source(path: Path, file_name: str) -> Optional[Path]:
    """Where HDF5 looks for a virtual source named ``file_name`` (relative names: beside the store file)."""
    if file_name in ("", "."):  # the store file itself: mdpr never writes this
        return None
    src = Path(file_name)
    if ".." in src.parts:
        return None
    full = src if src.is_absolute() else path.absolute().parent / src
    return Path(os.path.normpath(full))
