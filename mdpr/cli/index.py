"""``mdpr index build|update|info``: a faiss index beside a feature store, for search at scale."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import typer

from mdpr.cli.app import app, command, console, err_console, print_json

EXAMPLES = """
[bold]Examples[/]

  mdpr index build --gallery feats.h5                      # auto: exact below ~1M rows, else IVF-PQ
  mdpr index build --gallery feats.h5 --kind ivfpq --recall 0.95 --shards 4
  mdpr index update feats.h5                                # after `mdpr extract --append`
  mdpr index info feats.h5 --json

Needs the optional extra: pip install "mdpr\\[faiss]".
"""

index_app = typer.Typer(name="index", help="Build and inspect the faiss index beside a feature store.",
                        no_args_is_help=True, rich_markup_mode="rich", epilog=EXAMPLES)
app.add_typer(index_app, name="index")

class Kind(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


FLAGS = {"nlist": "--nlist", "m": "--m", "nbits": "--nbits", "hnsw_m": "--hnsw-m", "ef_construction": "--ef-construction",
         "shards": "--shards", "recall": "--recall", "gpu=True": "--gpu", "gpu": "--gpu", "kind": "--kind"}


@command("build", app_=index_app, flags=FLAGS, help="Build the index of a feature store (written beside it, atomically).",
         epilog=EXAMPLES)
def build(
    gallery: Path = typer.Option(..., "--gallery", "-g", help="Feature store written by `mdpr extract`."),
    kind: Kind = typer.Option(Kind.auto, "--kind", help="auto (chosen from the store's size and dimension), flat, "
                                                        "hnsw or ivfpq."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="The distance the index serves: cosine or euclidean."),
    recall: Optional[float] = typer.Option(None, "--recall", min=0.0, max=1.0, show_default=False,
                                           help="Tune nprobe / ef to reach this recall@10 (default: 0.95 when "
                                                "reachable)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", min=1, show_default=False, help="IVF-PQ: coarse lists."),
    m: Optional[int] = typer.Option(None, "--m", min=1, show_default=False,
                                    help="IVF-PQ: sub-vectors per code (divides the feature size)."),
    nbits: Optional[int] = typer.Option(None, "--nbits", min=1, max=16, show_default=False,
                                        help="IVF-PQ: bits per sub-vector code (default 4, scanned "
                                             "fastest; 8 with --gpu)."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", min=2, show_default=False, help="HNSW: links per node."),
    ef_construction: Optional[int] = typer.Option(None, "--ef-construction", min=1, show_default=False,
                                                  help="HNSW: candidates explored while building."),
    shards: int = typer.Option(1, "--shards", min=1, help="Shard indexes over consecutive row ranges."),
    gpu: bool = typer.Option(False, "--gpu", help="Train and add on a GPU (needs faiss with GPU support)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help="CPU threads (default: one per core; one when the machine is busy)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Train on a sample, add the rows in chunks from the memory-mapped store, measure recall@1/10/100."""
    from mdpr.workflows.index import build_index

    with _progress() as progress:
        result = build_index(gallery, kind.value, metric.value, recall=recall, nlist=nlist, m=m, nbits=nbits,
                             hnsw_m=hnsw_m, ef_construction=ef_construction, shards=shards, gpu=gpu, threads=threads,
                             progress=progress)
    if as_json:
        print_json(result.to_json())
        return
    if result.kind == "exact":
        console.print(f"No index written: {result.reason}. `mdpr query` searches {gallery} exactly.",
                      highlight=False, soft_wrap=True)
        return
    console.print(f"Built the index of {result.rows} rows ({_name(result.kind)}) in {result.seconds:.1f} s: "
                  f"{result.reason}.", highlight=False, soft_wrap=True)
    _table(f"Index {result.path}", _rows(result.kind, result.metric, result.rows, result.memory_bytes, result.recall,
                                          result.settings, result.params, result.shards))


@command("update", app_=index_app, help="Add rows appended to the store since its index was built.",
         epilog=EXAMPLES)
def update(
    gallery: Path = typer.Argument(..., help="Feature store whose index to update.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Incremental: only the new rows are added; a store that was rewritten needs `mdpr index build`."""
    from mdpr.workflows.index import update_index

    with _progress() as progress:
        result = update_index(gallery, progress=progress)
    if as_json:
        print_json(result.to_json())
        return
    said = "Added the new rows to" if result.updated else "Nothing to add:"
    console.print(f"{said} the {_name(result.kind)} index of {gallery} (now {result.rows} rows).", highlight=False,
                  soft_wrap=True)
    _table(f"Index {result.path}", _rows(result.kind, result.metric, result.rows, result.memory_bytes, result.recall,
                                          result.settings, result.params, result.shards))


@command("info", app_=index_app, help="Kind, size, memory, recall and settings of a store's index.",
         epilog=EXAMPLES)
def info(
    gallery: Path = typer.Argument(..., help="Feature store whose index to describe.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Also says whether the index is fresh (used by `mdpr query --index auto`), appended to, or stale."""
    from mdpr.workflows.index import index_info

    result = index_info(gallery)
    if as_json:
        print_json(result.to_json())
        return
    console.print(result.note, highlight=False, soft_wrap=True)
    if result.state == "none" or result.kind is None:
        return
    rows = _rows(result.kind, str(result.metric), result.rows, result.memory_bytes, result.recall, result.settings,
                 result.params, result.shards)
    rows += [("built", result.built), ("why this kind", result.reason)]
    _table(f"Index {result.path}", rows)


def _name(kind: str) -> str:
    return {"hnsw": "HNSW", "ivfpq": "IVF-PQ"}.get(kind, kind)


def _rows(kind: str, metric: str, rows: int, memory: int, recall: Dict[str, Any], settings: Dict[str, Any],
          params: Dict[str, Any], shards: int) -> List[Tuple[str, str]]:
    measured = ", ".join(f"@{k[3:]} {recall[k]:.3f}" for k in ("at_1", "at_10", "at_100") if k in recall)
    if "queries" in recall:
        measured += f" ({recall['queries']} of the store's rows as queries)"
    return [
        ("kind", _name(kind)),
        ("metric", metric),
        ("rows", f"{rows:,}"),
        ("memory", _size(memory)),
        ("recall", measured or "-"),
        ("search settings", ", ".join(f"{k} {v}" for k, v in settings.items()) or "-"),
        ("build settings", ", ".join(f"{k} {v}" for k, v in params.items()) or "-"),
        ("shards", str(shards)),
    ]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _table(title: str, rows: List[Tuple[str, str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr fed by the workflow's ``progress(stage, done, total)``."""
    from mdpr.cli.progress import StageProgress

    with StageProgress(err_console) as bar:
        yield lambda stage, done, total: bar(f"index:{stage}", done, total)
