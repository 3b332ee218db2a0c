"""``mdpr query``: search a feature store with probe images; table, JSON or a ranked-list picture."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

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

  mdpr query probe.jpg                                   [dim]# the most recent store, with the weights it records[/]
  mdpr query probe.jpg --gallery feats.h5 --weights model.pt
  mdpr query probe.jpg other.jpg --gallery feats.h5 --weights model.pt --top-k 5 --json
  mdpr query probes/ --gallery feats.h5 --weights model.pt --rerank --output ranked.png

JSON output: [{"probe": ..., "results": [{"rank": 1, "path": ..., "distance": ..., "pid": ..., "camid": ...}]}]
(pid / camid are null when unknown).
"""



class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


_FLAGS = {"top_k": "--top-k", "threads": "--threads", "metric": "--metric", "weights CKPT": "--weights CKPT",
          "gallery STORE": "--gallery STORE"}


@command("query", flags=_FLAGS, help="Search a feature store with probe image(s): ranked paths and distances.", epilog=EXAMPLES)
def query(
    probes: List[Path] = typer.Argument(..., help="Probe image(s), or folders of probe images.", show_default=False),
    gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", show_default=False,
                                           help="Feature store written by `mdpr extract`; default: the most recently "
                                                "written store."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", show_default=False,
                                           help="The checkpoint that produced the store; default: the one the store "
                                                "records."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Results per probe."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking of each probe's nearest candidates."),
    rerank_pool: int = typer.Option(100, "--rerank-pool", min=1, help="Candidates re-ranked per probe with --rerank."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="Distance: cosine (1 - cos) or euclidean."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of tables."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write a ranked-list picture (PNG).",
                                          show_default=False),
    save: Optional[Path] = typer.Option(None, "--save", hidden=True, help="Old name of --output."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    index: str = typer.Option("auto", "--index", help="auto (a fresh faiss index beside the store, else exact "
                                                       "search), exact, or the folder of an index."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, max=65536, show_default=False,
                                         help="IVF-PQ index: cells visited per probe (default: the tuned value)."),
    ef: Optional[int] = typer.Option(None, "--ef", min=1, max=65536, show_default=False,
                                     help="HNSW index: search breadth (default: the tuned value)."),
    backend: Optional[Backend] = typer.Option(None, "--backend", show_default=False,
                                              help=BACKEND_HELP),
    mixed_precision: bool = typer.Option(False, "--allow-mixed-precision",
                                         help="Accept INT8 probes against fp32 rows (or the reverse)."),
    workers: int = typer.Option(1, "--workers", min=0, help="Parallel image decoders, here threads (0 or 1: decode in "
                                                         "the main thread)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help=THREADS_HELP),
) -> None:
    """Embed the probe image(s) with the store's model and list the nearest gallery images.

    Refuses weights whose fingerprint differs from the store's. The search is exact and scans the
    store in chunks (bounded memory).
    """
    from mdpr.workflows.query import QueryRequest, run_query

    picture = output or save
    request = QueryRequest(probes=list(probes), gallery=gallery, weights=weights, top_k=top_k, rerank=rerank,
                           rerank_pool=rerank_pool, metric=metric.value, device=device, threads=threads,
                           workers=workers, picture=picture, index=index, nprobe=nprobe, ef=ef,
                           backend=backend.value if backend else None, allow_mixed_precision=mixed_precision)
    result = run_query(request, note=note_printer(_FLAGS))
    if as_json:
        print_json(result.to_json())
    else:
        _print_tables([p.probe for p in result.probes], [p.results for p in result.probes], rerank)
    if picture is not None:
        err_console.print(f"Saved the ranked list picture to {picture}.", highlight=False)


def _print_tables(probe_paths: List[Path], results: List[List[Dict[str, Any]]], rerank: bool) -> None:
    from rich.table import Table

    for probe, rows in zip(probe_paths, results):
        table = Table(title=f"{probe}" + (" (re-ranked)" if rerank else ""), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("distance", justify="right")
        table.add_column("pid", justify="right")
        table.add_column("camid", justify="right")
        table.add_column("path", overflow="fold")
        for r in rows:
            table.add_row(str(r["rank"]), f"{r['distance']:.4f}", _show(r["pid"]),
                          _show(r["camid"]), r["path"])
        console.print(table)


def _show(value: Optional[int]) -> str:
    return "-" if value is None else str(value)
