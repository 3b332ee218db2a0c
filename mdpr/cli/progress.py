"""Rendering workflow progress (``progress(stage, done, total)`` callbacks and notes) on stderr."""

from __future__ import annotations

from typing import Any, Dict, Optional

from rich.console import Console

#: Human labels of the stages workflows report.
STAGE_LABELS: Dict[str, str] = {
    "extract:query": "Extracting query features",
    "extract:gallery": "Extracting gallery features",
    "extract:train": "Extracting train features",
    "extract": "Extracting",
    "rerank:neighbours": "Re-ranking: nearest neighbours",
    "rerank:encoding": "Re-ranking: k-reciprocal encoding",
    "rerank:jaccard": "Re-ranking: Jaccard distances",
    "export": "Exporting",
    "openvino": "Converting to OpenVINO",
    "parity:onnxruntime": "Checking against PyTorch (onnxruntime)",
    "parity:openvino": "Checking against PyTorch (OpenVINO)",
    "parity:torchscript": "Checking against PyTorch (TorchScript)",
    "quantize": "Quantising to INT8",
    "fp32:extract:query": "fp32: extracting query features",
    "fp32:extract:gallery": "fp32: extracting gallery features",
    "int8:extract:query": "INT8: extracting query features",
    "int8:extract:gallery": "INT8: extracting gallery features",
    "index:train": "Training the index",
    "index:add": "Adding rows to the index",
    "index:recall": "Measuring recall",
    "export:parquet": "Writing Parquet",
}


class StageProgress:
    """A transient rich progress bar that follows the current stage; ``note`` prints a line above it."""

    def __init__(self, console: Console, show_rate: bool = False) -> None:
        self.console = console
        self.show_rate = show_rate
        self._bar: Any = None
        self._task: Any = None
        self._stage: Optional[str] = None

    def __enter__(self) -> StageProgress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns: list = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if self.show_rate:
            columns.append(_rate_column())
        columns.append(TimeRemainingColumn())
        self._bar = Progress(*columns, console=self.console, transient=True)
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        if self._bar is None:
            return
        if stage != self._stage:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(STAGE_LABELS.get(stage, stage), total=total)
            self._stage = stage
        self._bar.update(self._task, completed=done, total=total)

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")

    return RateColumn()

