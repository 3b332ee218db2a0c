"""``mdpr store``: maintenance of feature stores (``compact``: merge a store's segments into one file)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

#: Progress reports: a short description of the step about to run.
StepCallback = Callable[[str], None]


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
    done = compact(Path(store).expanduser())
    return CompactResult(
        store=done.path,
        rows=done.rows,
        segments_before=done.segments_before,
        segments_after=done.segments_after,
        bytes_before=done.bytes_before,
        bytes_after=done.bytes_after,
        seconds=time.monotonic() - started,
    )
