"""``mdpr store``: operations on a whole feature store (export of its rows as Parquet)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ParquetExportResult:
    store: Path
    folder: Path
    rows: int
    files: int
    bytes: int

    def to_json(self) -> Dict[str, Any]:
        return {"store": str(self.store), "folder": str(self.folder), "rows": self.rows, "files": self.files,
                "bytes": self.bytes}


def export_store_parquet(
    gallery: PathLike,
    folder: PathLike,
    *,
    rows_per_file: Optional[int] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> ParquetExportResult:
    """Write the rows of the store ``gallery`` (row, path, pid, camid, feature) as Parquet files in ``folder``
    (see :func:`mdpr.search.parquet.export_parquet`)."""
    from mdpr.search.parquet import ROWS_PER_FILE, export_parquet
    from mdpr.store import FeatureStore

    report = progress or (lambda stage, done, total: None)
    with FeatureStore.open(gallery) as store:
        out = export_parquet(store, folder, rows_per_file=rows_per_file or ROWS_PER_FILE,
                             progress=lambda done, total: report("export:parquet", done, total))
        return ParquetExportResult(store=Path(store.path), folder=out.folder, rows=out.rows, files=len(out.files),
                                   bytes=out.bytes)


__all__ = ["ParquetExportResult", "export_store_parquet"]
