"""A feature store's rows as Parquet files, for bulk import into a vector database (Milvus, Qdrant, LanceDB).

One file per block of rows (``part-00000.parquet``, ...), columns ``row`` (int64, the store's row number),
``path`` (string, absolute when the store has a root), ``pid`` and ``camid`` (int32, null when unknown) and
``feature`` (fixed-size list of float32, the stored feature, L2-normalised when the store is). A
``_meta.json`` beside them records the store's fingerprint, dimension, normalisation and row count. Rows are
read chunk by chunk from the store (bounded memory); each file is written atomically and ``_meta.json``
last, so a folder with a ``_meta.json`` is complete. Needs the optional extra ``mdpr[parquet]`` (pyarrow).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

import numpy as np

from mdpr import __version__
from mdpr.errors import MdprError
from mdpr.fileio import atomic_path, atomic_write_json, check_output_folder
from mdpr.store import FeatureStore

PathLike = Union[str, "os.PathLike[str]"]
#: Rows per Parquet file (about 128 MB of 512-d float32 features per file; vector databases import in parallel).
ROWS_PER_FILE = 1 << 16
META_FILE = "_meta.json"


@dataclass
class ParquetExport:
    folder: Path
    rows: int
    files: List[Path]
    bytes: int


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule is what writes files
    except ImportError:
        raise MdprError('Writing Parquet needs the pyarrow library, which is not installed; install it with '
                        'pip install "mdpr[parquet]".') from None
    return pyarrow


def export_parquet(
    store: FeatureStore,
    folder: PathLike,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    resolve: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
) -> ParquetExport:
    """Write ``store``'s rows (row, path, pid, camid, feature) as Parquet files in ``folder``.

    ``resolve=True`` writes absolute paths (joined to the store's root), otherwise paths as stored. Refuses a
    folder that holds other files than an earlier export.
    """
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise MdprError(f"Parquet folder {out} is a file; pass a folder name.")
    check_output_folder(out, "the Parquet folder")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not (p.name == META_FILE or p.name.startswith("part-"))]
        if foreign:
            raise MdprError(f"Parquet folder {out} already holds other files ({foreign[0]}, ...); pass an empty or "
                            "new folder.")
        for p in out.glob("part-*.parquet"):  # an earlier export is replaced whole
            p.unlink()
        (out / META_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    n, dim = len(store), store.dim
    rows_per_file = max(1, int(rows_per_file))
    pids, camids = store.pids, store.camids
    schema = pa.schema([
        ("row", pa.int64()), ("path", pa.string()), ("pid", pa.int32()), ("camid", pa.int32()),
        ("feature", pa.list_(pa.float32(), dim)),
    ])
    files: List[Path] = []

    def write(start: int, feats: np.ndarray) -> None:
        stop = start + feats.shape[0]
        paths = store.paths_at(list(range(start, stop)))
        if resolve:
            paths = [str(store.resolve(p)) for p in paths]
        pid, cam = pids[start:stop], camids[start:stop]
        table = pa.table({
            "row": pa.array(np.arange(start, stop, dtype=np.int64)),
            "path": pa.array(paths, pa.string()),
            "pid": pa.array(pid, pa.int32(), mask=pid < 0),
            "camid": pa.array(cam, pa.int32(), mask=cam < 0),
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim),
        }, schema=schema)
        target = out / f"part-{len(files):05d}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        files.append(target)
        if progress is not None:
            progress(stop, n)

    # one pass over the memory-mapped store, one file's worth of float32 rows in memory at a time
    buffer = np.empty((min(n, rows_per_file), dim), dtype=np.float32)
    filled, part_start = 0, 0
    for _, block in store.scan():
        taken = 0
        while taken < block.shape[0]:
            step = min(block.shape[0] - taken, rows_per_file - filled)
            buffer[filled : filled + step] = block[taken : taken + step]
            filled, taken = filled + step, taken + step
            if filled == rows_per_file:
                write(part_start, buffer[:filled])
                part_start, filled = part_start + filled, 0
    if filled:
        write(part_start, buffer[:filled])
    atomic_write_json(out / META_FILE, {
        "format": "mdpr-parquet-export", "mdpr_version": __version__, "store": str(store.path), "rows": n, "dim": dim,
        "dtype": "float32", "stored_dtype": store.dtype.name, "normalized": bool(store.normalized),
        "fingerprint": store.fingerprint, "files": [f.name for f in files],
        "columns": ["row", "path", "pid", "camid", "feature"],
    })
    return ParquetExport(folder=out, rows=n, files=files, bytes=sum(f.stat().st_size for f in files))


__all__ = ["ROWS_PER_FILE", "ParquetExport", "export_parquet"]
