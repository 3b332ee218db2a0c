"""``mdpr query``: search a feature store with probe images; table, JSON or a ranked-list picture."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from mdpr.cli.app import command, console, err_console, print_json

EXAMPLES = """
[bold]Examples[/]

  mdpr query probe.jpg --gallery feats.h5 --weights model.pt
  mdpr query probe.jpg other.jpg --gallery feats.h5 --weights model.pt --top-k 5 --json
  mdpr query probes/ --gallery feats.h5 --weights model.pt --rerank --save ranked.png

JSON output: [{"probe": ..., "results": [{"rank": 1, "path": ..., "distance": ..., "pid": ..., "camid": ...}]}]
(pid / camid are null when unknown).
"""


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


@command("query", flags={"top_k": "--top-k", "threads": "--threads", "metric": "--metric"}, help="Search a feature store with probe image(s): ranked paths and distances.", epilog=EXAMPLES)
def query(
    probes: List[Path] = typer.Argument(..., help="Probe image(s), or folders of probe images.", show_default=False),
    gallery: Path = typer.Option(..., "--gallery", "-g", help="Feature store written by `mdpr extract`."),
    weights: Path = typer.Option(..., "--weights", help="The checkpoint that produced the store."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Results per probe."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking of each probe's nearest candidates."),
    rerank_pool: int = typer.Option(100, "--rerank-pool", min=1, help="Candidates re-ranked per probe with --rerank."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="Distance: cosine (1 - cos) or euclidean."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of tables."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write a ranked-list picture (PNG).", show_default=False),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help="CPU threads for the model (default: one per core; one when the "
                                               "machine is already busy)."),
) -> None:
    """Embed the probe image(s) with the store's model and list the nearest gallery images.

    Refuses weights whose fingerprint differs from the store's. The search is exact and scans the
    store in chunks (bounded memory).
    """
    from mdpr.workflows.query import QueryRequest, run_query

    request = QueryRequest(probes=list(probes), gallery=gallery, weights=weights, top_k=top_k, rerank=rerank,
                           rerank_pool=rerank_pool, metric=metric.value, device=device, threads=threads, picture=save)
    result = run_query(request, note=lambda line: err_console.print(f"[yellow]Note:[/] {line}", highlight=False,
                                                                     soft_wrap=True))
    if as_json:
        print_json(result.to_json())
    else:
        _print_tables([p.probe for p in result.probes], [p.results for p in result.probes], rerank)
    if save is not None:
        err_console.print(f"Saved the ranked list picture to {save}.", highlight=False)


def _print_tables(probe_paths: List[Path], results: List[List[Dict[str, Any]]], rerank: bool) -> None:
    from rich.table import Table

    for probe, rows in zip(probe_paths, results):
        table = Table(title=f"{probe}" + (" (re-ranked)" if rerank else ""), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("distance", justify="right")
        table.add_column("pid", justify="right")
        table.add_column("cam", justify="right")
        table.add_column("path", overflow="fold")
        for r in rows:
            table.add_row(str(r["rank"]), f"{r['distance']:.4f}", _show(r["pid"]),
                          _show(None if r["camid"] is None else r["camid"] + 1), r["path"])
        console.print(table)


def _show(value: Optional[int]) -> str:
    return "-" if value is None else str(value)
