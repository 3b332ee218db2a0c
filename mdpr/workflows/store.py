"""``mdpr store``: operations on a whole feature store: ``compact`` (merge its segments into one file) and
``export`` (its rows as Parquet)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from mdpr.fileio import check_output_file

PathLike = Union[str, "os.PathLike[str]"]

#: Progress reports: a short description of the step about to run.
StepCallback = Callable[[str], None]


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


@dataclass
class CompactResult:
    """What compacting a store did."""

    store: Path
    rows: int
    segments_before: int
    segments_after: int
    bytes_before: int
    bytes_after: int
    seconds: float

    @property
    def changed(self) -> bool:
        return self.segments_before != self.segments_after or self.bytes_before != self.bytes_after


def compact_store(store: Union[str, Path], progress: Optional[StepCallback] = None) -> CompactResult:
    """Merge ``store``'s segments (and the rows of an interrupted run's journal) into one HDF5 file.

    Crash-safe (the new file replaces the store atomically; the segments are removed afterwards) and
    refused while another process writes the store. Rows, order, version stamp and ``complete`` stay.
    """
    from mdpr.store import compact

    started = time.monotonic()
    if progress is not None:
        progress(f"Compacting {store}")
    path = Path(store).expanduser()
    check_output_file(path, "the compacted store")  # it replaces the store in its own folder
    done = compact(path)
    return CompactResult(
        store=done.path,
        rows=done.rows,
        segments_before=done.segments_before,
        segments_after=done.segments_after,
        bytes_before=done.bytes_before,
        bytes_after=done.bytes_after,
        seconds=time.monotonic() - started,
    )


__all__ = ["CompactResult", "ParquetExportResult", "compact_store", "export_store_parquet"]
