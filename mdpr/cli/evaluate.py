"""``mdpr evaluate``: CMC / mAP / mINP of a model (or of stored features) under the standard protocol."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from mdpr.cli.app import BACKEND_HELP, DEVICE_HELP, THREADS_HELP, Backend, command, console, err_console, print_json
from mdpr.cli.progress import StageProgress

EXAMPLES = """
[bold]Examples[/]

  mdpr evaluate --dataset demo --weights runs/demo/model.pt
  mdpr evaluate --dataset market1501 --weights market_mdpr.pth --rerank --aqe --json
  mdpr evaluate --dataset demo --weights runs/demo/model.pt --output feats/demo
  mdpr evaluate --query-features feats/demo/query.h5 --gallery-features feats/demo/gallery.h5 --metric euclidean
  mdpr evaluate --query-features q.h5 --gallery-features g.h5 --rerank --rerank-method zhong
  mdpr evaluate --query-features q.h5 --gallery-features g.h5 --no-cross-camera-only --ap trapezoid
"""

#: Library argument names -> this command's flags, for error messages.
_FLAGS = {
    "cross_camera_only=False": "--no-cross-camera-only", "query_store": "--query-features",
    "gallery_store": "--gallery-features", "save_features": "--output", "save_metrics": "--save-metrics",
    "flip": "--flip", "lambda_value": "--lambda", "aqe_k": "--aqe-k", "aqe_alpha": "--aqe-alpha",
    "max_rank": "--max-rank", "k1": "--k1", "k2": "--k2",
    "a dataset with weights": "--dataset NAME --weights CKPT",
    "query and gallery feature stores": "--query-features q.h5 --gallery-features g.h5",
}



class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


class RerankMethod(str, Enum):
    jaccard = "jaccard"
    zhong = "zhong"


class APVariant(str, Enum):
    standard = "standard"
    trapezoid = "trapezoid"


@command("evaluate", flags=_FLAGS, help="Evaluate a model or stored features: Rank-1/5/10, mAP and mINP under the standard protocol.",
         epilog=EXAMPLES)
def evaluate_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Registered dataset (or manifest path) to evaluate on."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Checkpoint (mdpr or official fast-reid) to evaluate."),
    query_features: Optional[Path] = typer.Option(None, "--query-features", help="Query feature store (.h5) instead of a model."),
    gallery_features: Optional[Path] = typer.Option(None, "--gallery-features", help="Gallery feature store (.h5)."),
    metric: Metric = typer.Option(Metric.cosine, "--metric",
                                  help="cosine (1 - cos, as the paper) or euclidean (Euclidean distance; ranks as "
                                       "fast-reid's squared distance)."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)."),
    rerank_method: RerankMethod = typer.Option(RerankMethod.jaccard, "--rerank-method",
                                               help="jaccard: fast-reid / official MDPR; zhong: the classic formula."),
    k1: int = typer.Option(20, "--k1", help="Re-ranking: k-reciprocal neighbours."),
    k2: int = typer.Option(6, "--k2", help="Re-ranking: neighbours of the local query expansion."),
    lambda_value: float = typer.Option(0.3, "--lambda", help="Re-ranking: weight of the original distance."),
    use_aqe: bool = typer.Option(False, "--aqe", help="Alpha query expansion (k 5, alpha 3) before ranking."),
    aqe_k: int = typer.Option(5, "--aqe-k", help="Query expansion: neighbours averaged."),
    aqe_alpha: float = typer.Option(3.0, "--aqe-alpha", help="Query expansion: similarity exponent."),
    flip: bool = typer.Option(False, "--flip", help="Average each image's features with its mirror image's."),
    cross_camera_only: bool = typer.Option(
        True, "--cross-camera-only/--no-cross-camera-only",
        help="Remove gallery images of the query's person taken by the query's camera (standard).",
    ),
    ap: APVariant = typer.Option(APVariant.standard, "--ap",
                                 help="standard: non-interpolated AP (torchreid, fast-reid); trapezoid: Market-1501 devkit."),
    cuhk03_classic: bool = typer.Option(False, "--cuhk03-classic",
                                        help="CUHK03 classic single-gallery-shot CMC (10 random draws)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of --cuhk03-classic."),
    max_rank: int = typer.Option(50, "--max-rank", help="Length of the CMC curve."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", show_default=False,
                                          help="Folder to write the query.h5 and gallery.h5 feature stores into."),
    save_features: Optional[Path] = typer.Option(None, "--save-features", hidden=True, help="Old name of --output."),
    device: str = typer.Option("auto", "--device", help="Where features are extracted: " + DEVICE_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, show_default=False,
                                             help="Images per forward pass (default: the checkpoint's test batch size)."),
    old_num_workers: Optional[int] = typer.Option(None, "--num-workers", min=0, hidden=True, help="Old name of --workers."),
    num_workers: Optional[int] = typer.Option(None, "--workers", min=0, show_default=False,
                                              help="Parallel image decoders, here processes (0: decode in the main "
                                                                   "process; default: 1 on CPU, up to 8 on GPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help=THREADS_HELP),
    backend: Optional[Backend] = typer.Option(None, "--backend", show_default=False,
                                              help=BACKEND_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    save_metrics: Optional[Path] = typer.Option(None, "--save-metrics",
                                                help="Also write the JSON summary (as --json prints it) to this file."),
) -> None:
    """Evaluate a model on a dataset's query/gallery split, or stored query/gallery features."""
    from mdpr.workflows.evaluate import EvaluateRequest, Protocol, run_evaluate

    request = EvaluateRequest(
        dataset=dataset, weights=weights, query_store=query_features, gallery_store=gallery_features,
        protocol=Protocol(
            metric=metric.value, rerank=rerank, rerank_method=rerank_method.value, k1=k1, k2=k2,
            lambda_value=lambda_value, aqe=use_aqe, aqe_k=aqe_k, aqe_alpha=aqe_alpha,
            cross_camera_only=cross_camera_only, ap=ap.value, cuhk03_classic=cuhk03_classic, seed=seed,
            max_rank=max_rank,
        ),
        flip=flip or None, device=device, batch_size=batch_size, num_workers=num_workers if num_workers is not None else old_num_workers,
        threads=threads, backend=backend.value if backend else None,
        save_features=output or save_features, save_metrics=save_metrics,
    )
    with StageProgress(err_console) as progress:
        result = run_evaluate(request, progress=progress, note=progress.note)
    if json_output:
        print_json(result.to_dict())
        return
    _print_table(result)


def _print_table(result: Any) -> None:
    from rich.table import Table

    summary = result.to_dict()
    table = Table(title=f"{result.query_source} vs {result.gallery_source}", title_justify="left")
    for name in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"):
        table.add_column(name, justify="right")
    table.add_column("queries used / skipped", justify="right")
    table.add_row(
        *(f"{100 * summary[key]:.2f}" for key in ("rank1", "rank5", "rank10", "mAP", "mINP")),
        f"{summary['num_valid_queries']} / {summary['num_skipped_queries']}",
    )
    console.print(table)
    console.print(f"[dim]Protocol:[/] {summary['protocol']}; {summary['num_gallery']} gallery images.", highlight=False)
    dropped = summary["unlabelled_dropped"]
    if dropped["query"] or dropped["gallery"]:
        console.print(f"[yellow]Left out images without a person id:[/] {dropped['query']} query, "
                      f"{dropped['gallery']} gallery.", highlight=False)
    if summary["unreadable_images"]:
        console.print(f"[yellow]Skipped {summary['unreadable_images']} unreadable images.[/]", highlight=False)
