"""``mdpr prepare DATASET ROOT``: convert a downloaded dataset (or generate the demo) and register it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdpr.cli.app import command, console, err_console, print_json

EPILOG = """
[bold]Examples[/]

  mdpr prepare demo mdpr-demo/data                      [dim]# synthetic demo, registered as 'demo'[/]
  mdpr prepare demo tiny --ids 10 --images-per-id 6 --size 64x32 --name tiny-demo
  mdpr prepare market1501 ~/datasets                    [dim]# finds Market-1501-v15.09.15/ below[/]
  mdpr prepare market ~/Downloads/Market-1501-v15.09.15.zip --json
  mdpr prepare market1501 ~/datasets --with-distractors --name market500k
  mdpr prepare dukemtmc ~/datasets/DukeMTMC-reID --verify
  mdpr prepare msmt17 ~/datasets/MSMT17_V2 --with-val
  mdpr prepare cuhk03 ~/datasets/cuhk03 --variant detected --protocol new
  mdpr prepare synergyreid ~/datasets/synergyreid_data --challenge --name synergy-challenge
  mdpr prepare folder ~/my-reid-data --name shop-cams

Supported datasets: market1501 (market), dukemtmc (duke), msmt17, cuhk03, synergyreid, folder, demo.
See docs/prepare.md and docs/datasets.md.
"""


@command("prepare", resumable=True, flags={"ids": "--ids", "images_per_id": "--images-per-id", "cameras": "--cameras", "size": "--size", "seed": "--seed"}, help="Convert a downloaded dataset (or generate the demo) and register it by name.", epilog=EPILOG)
def prepare(
    dataset: str = typer.Argument(
        ..., help="market1501 (market), dukemtmc (duke), msmt17, cuhk03, synergyreid, folder, or demo."
    ),
    root: Path = typer.Argument(
        ...,
        help="The dataset folder, the folder that contains it, or the downloaded .zip; for demo, the folder to create.",
        show_default=False,
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Register under this name (default: the dataset name; 'demo' for the demo)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object of statistics instead of the table."),
    verify: bool = typer.Option(
        False, "--verify", help="Decode every image in parallel; report unreadable ones and leave them out."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Parallel image decoders for --verify, here "
                                                                      "threads (0 or 1: the main thread; default: up to 8)."),
    with_distractors: bool = typer.Option(
        False, "--with-distractors", help="market1501: add the 500k distractors (images/) to the gallery."
    ),
    with_val: bool = typer.Option(False, "--with-val", help="msmt17: also train on list_val.txt."),
    variant: Optional[str] = typer.Option(None, "--variant", help="cuhk03: labeled (default) or detected."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="cuhk03: new (767/700, default) or classic."),
    challenge: bool = typer.Option(False, "--challenge", help="synergyreid: the unlabelled challenge split."),
    ids: int = typer.Option(100, "--ids", help="demo: number of identities (half train, half test)."),
    images_per_id: int = typer.Option(16, "--images-per-id", help="demo: images per identity."),
    cameras: int = typer.Option(4, "--cameras", help="demo: number of cameras."),
    size: str = typer.Option("128x64", "--size", help="demo: image size HEIGHTxWIDTH."),
    seed: int = typer.Option(0, "--seed", help="demo: random seed (same seed, same images)."),
) -> None:
    """Convert a downloaded dataset into mdpr's manifest form and register it, so that later commands
    accept [bold]--dataset NAME[/]. [bold]mdpr prepare demo DIR[/] generates the synthetic demo dataset
    (Market-1501 layout) in DIR first."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mdpr.data.datasets.base import PrepareOptions
    from mdpr.workflows.prepare import PrepareRequest, prepare

    request = PrepareRequest(
        dataset=dataset, root=root, name=name, verify=verify, workers=workers, ids=ids, images_per_id=images_per_id,
        cameras=cameras, size=size, seed=seed,
        options=PrepareOptions(with_distractors=with_distractors, with_val=with_val, variant=variant,
                               protocol=protocol, challenge=challenge),
    )
    # progress goes to stderr so that --json keeps stdout to exactly one JSON object
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        tasks: dict = {}

        def progress(done: int, total: int, stage: str) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        outcome = prepare(request, progress)
    result, notes = outcome.result, outcome.notes

    manifest = result.manifest
    if result.unreadable:
        err_console.print(f"[yellow]{len(result.unreadable)} unreadable image(s), left out of the manifest:[/]")
        for path, reason in result.unreadable[:50]:
            err_console.print(f"  {path}: {reason}", highlight=False, markup=False)
        if len(result.unreadable) > 50:
            err_console.print(f"  ... and {len(result.unreadable) - 50} more")
    if json_out:
        for note in notes:
            err_console.print(f"[dim]{note}[/]", highlight=False)
        print_json(manifest.stats())
        return

    from rich.table import Table

    table = Table(title=f"{manifest.dataset} registered as '{manifest.name}'", title_justify="left")
    table.add_column("split")
    table.add_column("ids", justify="right")
    table.add_column("images", justify="right")
    table.add_column("cameras", justify="right")
    for split, row in manifest.split_stats().items():
        table.add_row(split, f"{row['ids']:,}", f"{row['images']:,}", str(row["cameras"]))
    console.print(table)
    for note in notes:
        console.print(f"[dim]- {note}[/]", highlight=False)
    if verify and not result.unreadable:
        console.print("[green]All images decode.[/]")
    console.print(f"Root: {manifest.root}", highlight=False)
    console.print(f"Manifest: {result.manifest_path}", highlight=False)
    aka = f" (or --dataset {dataset}, as you typed it)" if dataset.lower() != manifest.name.lower() and not name else ""
    console.print(f"Use it with [bold]--dataset {manifest.name}[/]{aka}.", highlight=False)
    console.print(f"Next: train on it with [bold]mdpr train --dataset {manifest.name}[/]", highlight=False,
                  soft_wrap=True)
