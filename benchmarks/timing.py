"""Timing shared by the benchmark scripts: alternate the measured tasks so that load from other
processes hits all of them alike."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List


def interleaved(tasks: Dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> Dict[str, List[float]]:
    """Seconds per call of each task: one warm-up round (unless ``warmup`` is False), then ``repeats``
    rounds that run every task once, in turn."""
    if warmup:
        for task in tasks.values():
            task()
    times: Dict[str, List[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    return times
