"""``mdpr extract``: embed a folder of crops (or a prepared dataset split) into an HDF5 feature store."""

from __future__ import annotations

import shlex
import signal
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from mdpr.cli.app import (
    BACKEND_HELP,
    DEVICE_HELP,
    THREADS_HELP,
    Backend,
    command,
    console,
    err_console,
    note_printer,
    print_json,
)

EXAMPLES = """
[bold]Examples[/]

  mdpr extract --images crops/ --weights model.pt --output feats.h5
  mdpr extract --images crops/ --weights model.pt --output feats.h5 --half --flip --batch-size 128
  mdpr extract --images new_crops/ --weights model.pt --output feats.h5 --append
  mdpr extract --dataset demo --split query --weights mdpr-demo/run/model.pt --output demo_query.h5

Interrupted (Ctrl-C, kill, power cut)? Re-run the same command: it continues where it stopped,
with every image stored exactly once.
"""

_SHOWN_FAILURES = 10



class Split(str, Enum):
    query = "query"
    gallery = "gallery"
    train = "train"


_FLAGS = {"images FOLDER": "--images FOLDER", "dataset NAME": "--dataset NAME", "split": "--split",
          "threads": "--threads", "batch_size": "--batch-size", "weights CKPT": "--weights CKPT",
          "output STORE.h5": "--output STORE.h5", "flip": "--flip", "half": "--half"}


@command("extract", resumable=True, flags=_FLAGS, help="Embed images into an HDF5 feature store (resumable; --append adds new images).",
         epilog=EXAMPLES)
def extract(
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images to index (searched recursively), "
                                                                  "or one image file.", show_default=False),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A prepared dataset name (or manifest path) instead of --images.",
                                          show_default=False),
    split: Split = typer.Option(Split.gallery, "--split", help="Which split of --dataset to index."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", show_default=False,
                                           help="Model checkpoint (mdpr or official MDPR .pth); default: the most "
                                                "recent model trained with `mdpr train`."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", show_default=False,
                                          help="Feature store to create, resume or append to (.h5); default for "
                                               "--images DIR: MDPR_HOME/stores/DIR.h5."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Parallel image decoders, here processes (0: decode in the main process; "
                                               "default: 1 on CPU, up to 8 on GPU).",
                                          show_default=False),
    flip: bool = typer.Option(False, "--flip", help="Average each feature with the horizontally flipped image's."),
    half: bool = typer.Option(False, "--half", help="Store float16 features (half the disk space)."),
    append: bool = typer.Option(False, "--append", help="Add images that are not in an existing complete store yet."),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", min=0.0,
                                           help="Seconds between refreshes of the store file during a long run."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help=THREADS_HELP),
    backend: Optional[Backend] = typer.Option(None, "--backend", show_default=False,
                                              help=BACKEND_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (store, counts, failed images) "
                                                        "instead of the report."),
) -> None:
    """Embed every image of a folder (or of a dataset split) into a feature store for `mdpr query`.

    Features are L2-normalised; paths are stored relative to the folder (or dataset root); pids and
    camids come from Market-style file names (0002_c1s1_000451_03.jpg) or from the dataset, -1 when
    unknown. Images that cannot be read are skipped and listed. Re-running the same command after an
    interruption continues where it stopped.
    """
    from mdpr.workflows.extract import ExtractRequest, run_extract

    request = ExtractRequest(output=output, weights=weights, images=images, dataset=dataset, split=split.value,
                             device=device, batch_size=batch_size, workers=workers, threads=threads, flip=flip,
                             half=half, append=append, checkpoint_interval=checkpoint_every,
                             backend=backend.value if backend else None)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` gets the same clean stop as Ctrl-C
    try:
        summary = _run_with_progress(lambda progress: run_extract(request, progress, note=note_printer(_FLAGS)))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if json_out:
        print_json(summary.to_json())
        return
    _report(summary, summary.source)
    console.print(f"Next: search it with [bold]mdpr query PROBE.jpg --gallery {shlex.quote(str(summary.output))}[/]",
                  highlight=False, soft_wrap=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_with_progress(fn: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")

    with Progress(TextColumn("Extracting"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("extract", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return fn(progress)


def _report(summary: Any, source: str) -> None:
    kind = f"{summary.dim}-d {summary.dtype}"
    if summary.added == 0 and not summary.failed:
        console.print(f"Nothing new to extract: {summary.output} already holds the images of {source} "
                      f"({summary.total} images, {kind}).", highlight=False, soft_wrap=True)
        return
    if summary.resumed:
        console.print(f"Resumed an interrupted extraction ({summary.already_stored} images were already stored).",
                      highlight=False, soft_wrap=True)
    elif summary.already_stored:
        console.print(f"{summary.already_stored} images were already in the store.", highlight=False, soft_wrap=True)
    console.print(
        f"Stored {summary.added} new features in {summary.output} (now {summary.total} images, {kind}, "
        f"L2-normalised) at {summary.images_per_second:.1f} images/s.",
        highlight=False,
        soft_wrap=True,
    )
    if summary.failed:
        n = len(summary.failed)
        console.print(f"[yellow]{n} image(s) could not be read and were skipped[/] (listed in the store's "
                      "failed_images attribute):", highlight=False, soft_wrap=True)
        for path, reason in summary.failed[:_SHOWN_FAILURES]:
            console.print(f"  {path}: {reason}", highlight=False, markup=False, soft_wrap=True)
        if n > _SHOWN_FAILURES:
            console.print(f"  ... and {n - _SHOWN_FAILURES} more", highlight=False, soft_wrap=True)
