"""``mdpr evaluate``: CMC / mAP / mINP of a model (or of stored features) under the standard protocol."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer

from mdpr.cli.app import command, console, err_console, print_json
from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text

EXAMPLES = """
[bold]Examples[/]

  mdpr evaluate --dataset demo --weights runs/demo/model.pt
  mdpr evaluate --dataset market1501 --weights market_mdpr.pth --rerank --aqe --json
  mdpr evaluate --dataset demo --weights runs/demo/model.pt --save-features feats/demo
  mdpr evaluate --query-features feats/demo/query.h5 --gallery-features feats/demo/gallery.h5 --metric euclidean
  mdpr evaluate --query-features q.h5 --gallery-features g.h5 --rerank --rerank-method zhong
  mdpr evaluate --query-features q.h5 --gallery-features g.h5 --no-cross-camera-only --ap trapezoid
"""

# Above this many images re-ranking prints its time and memory estimate before starting.
_ANNOUNCE_RERANK_IMAGES = 5000


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


class RerankMethod(str, Enum):
    jaccard = "jaccard"
    zhong = "zhong"


class APVariant(str, Enum):
    standard = "standard"
    trapezoid = "trapezoid"


@dataclass
class _Side:
    """Features and labels of the query or the gallery set."""

    name: str
    features: Any
    pids: Any
    camids: Any
    source: str
    fingerprint: str = ""
    flip: Optional[bool] = None
    normalized: Optional[bool] = None
    unreadable: List[Tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ loading


def _load_store(path: Path, name: str) -> _Side:
    import numpy as np

    from mdpr.store import FeatureStore

    with FeatureStore.open(path) as store:
        if len(store) == 0:
            raise MdprError(f"The {name} feature store {path} is empty; extract features into it first.")
        return _Side(
            name=name,
            features=store.read_features(dtype=np.float32),
            pids=np.asarray(store.pids, dtype=np.int64),
            camids=np.asarray(store.camids, dtype=np.int64),
            source=str(path),
            fingerprint=store.fingerprint,
            flip=store.flip,
            normalized=store.normalized,
        )


def _check_pair(query: _Side, gallery: _Side) -> None:
    """Query and gallery must be comparable: same dimension, same model."""
    qd, gd = query.features.shape[1], gallery.features.shape[1]
    if qd != gd:
        raise MdprError(
            f"The query features ({query.source}) are {qd}-d but the gallery features ({gallery.source}) are {gd}-d; "
            "extract both with the same model."
        )
    if query.fingerprint and gallery.fingerprint and query.fingerprint != gallery.fingerprint:
        raise MdprError(
            f"The query and gallery stores come from different models (fingerprints {query.fingerprint[:12]} and "
            f"{gallery.fingerprint[:12]}); extract both with the same weights."
        )


def _extract(dataset: str, weights: Path, flip: bool, device: str, batch_size: int, num_workers: Optional[int],
             save_dir: Optional[Path]) -> Tuple[_Side, _Side]:
    import numpy as np

    from mdpr.data.records import load_dataset
    from mdpr.inference import FeatureExtractor

    manifest = load_dataset(dataset)
    if not manifest.query or not manifest.gallery:
        raise MdprError(
            f"Dataset '{manifest.name}' has {len(manifest.query)} query and {len(manifest.gallery)} gallery images; "
            "evaluation needs both (prepare a dataset with a query/gallery split)."
        )
    extractor = FeatureExtractor(str(weights), device=device, batch_size=batch_size, num_workers=num_workers, flip=flip)
    sides = []
    for name, records in (("query", manifest.query), ("gallery", manifest.gallery)):
        paths = [str(manifest.image_path(r)) for r in records]
        feats, ok, failed = _run_with_bar(f"Extracting {name} features", len(paths),
                                          lambda cb, p=paths: extractor.extract_paths(p, progress=cb))
        ok = np.asarray(ok, dtype=np.int64)
        if ok.size == 0:
            raise MdprError(f"None of the {len(paths)} {name} images of '{manifest.name}' could be read; check the dataset files.")
        side = _Side(
            name=name,
            features=np.asarray(feats, dtype=np.float32),
            pids=np.asarray([records[i].pid for i in ok], dtype=np.int64),
            camids=np.asarray([records[i].camid for i in ok], dtype=np.int64),
            source=f"{manifest.name}/{name}",
            fingerprint=extractor.fingerprint,
            flip=flip,
            unreadable=list(failed),
        )
        if save_dir is not None:
            _save_store(save_dir / f"{name}.h5", side, [records[i] for i in ok], extractor, manifest)
        sides.append(side)
    return sides[0], sides[1]


def _save_store(path: Path, side: _Side, records: List[Any], extractor: Any, manifest: Any) -> None:
    from mdpr.store import StoreMeta, write_store

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = StoreMeta(
        dim=side.features.shape[1], fingerprint=extractor.fingerprint, normalized=False, flip=bool(side.flip),
        model_config=extractor.config.to_dict(), preprocessing=dict(extractor.preprocessing or {}), root=str(Path(manifest.root).resolve()),
    )
    write_store(path, meta, side.features, [r.path for r in records], side.pids, side.camids, failed=side.unreadable)


def _run_with_bar(description: str, total: int, fn: Any) -> Any:
    """Run ``fn(progress_callback)`` under a transient rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_now: Optional[int] = None, *_: Any) -> None:
            bar.update(task, completed=done, total=total_now or total)

        return fn(update)


def _rerank_with_bar(fn: Any) -> Any:
    """Run ``fn(progress)`` with one transient bar per re-ranking stage on stderr."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"neighbours": "Re-ranking: nearest neighbours", "encoding": "Re-ranking: k-reciprocal encoding",
              "jaccard": "Re-ranking: Jaccard distances"}
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console,
                  transient=True) as bar:
        task = bar.add_task(labels["neighbours"], total=1)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=labels.get(stage, stage), completed=done, total=total)

        return fn(update)


# ------------------------------------------------------------------------------------------------ filtering


def _usable(side: _Side, cross_camera_only: bool) -> Tuple[_Side, int]:
    """Drop images without a person id (pid < 0: unknown or junk), as the field's dataset readers do."""
    keep = side.pids >= 0
    dropped = int((~keep).sum())
    if not keep.any():
        raise MdprError(
            f"No {side.name} image in {side.source} has a person id (all pids are -1); "
            "evaluation needs labelled query and gallery images."
        )
    if cross_camera_only and (side.camids[keep] < 0).any():
        raise MdprError(
            f"Some {side.name} images in {side.source} have no camera id (-1), which the cross-camera protocol needs; "
            "pass --no-cross-camera-only for single-camera data."
        )
    if dropped:
        side = _Side(side.name, side.features[keep], side.pids[keep], side.camids[keep], side.source,
                     side.fingerprint, side.flip, side.normalized, side.unreadable)
    return side, dropped


# ------------------------------------------------------------------------------------------------ command


@command("evaluate", help="Evaluate a model or stored features: Rank-1/5/10, mAP and mINP under the standard protocol.",
         epilog=EXAMPLES)
def evaluate_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Registered dataset (or manifest path) to evaluate on."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Checkpoint (mdpr or official fast-reid) to evaluate."),
    query_features: Optional[Path] = typer.Option(None, "--query-features", help="Query feature store (.h5) instead of a model."),
    gallery_features: Optional[Path] = typer.Option(None, "--gallery-features", help="Gallery feature store (.h5)."),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="cosine (as the paper) or euclidean (squared, as fast-reid)."),
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
    save_features: Optional[Path] = typer.Option(None, "--save-features",
                                                 help="Folder to write query.h5 and gallery.h5 feature stores into."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (feature extraction)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Image decoding processes (default: 1 on CPU)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    save_metrics: Optional[Path] = typer.Option(None, "--save-metrics",
                                                help="Also write the JSON summary (as --json prints it) to this file."),
) -> None:
    """Evaluate a model on a dataset's query/gallery split, or stored query/gallery features."""
    import numpy as np

    from mdpr.evaluation import aqe, compute_distance, estimate_re_rank, evaluate, re_rank

    use_stores = query_features is not None or gallery_features is not None
    use_model = dataset is not None or weights is not None
    if use_stores and use_model:
        raise MdprError("Pass either --dataset with --weights, or --query-features with --gallery-features, not both.")
    if use_stores:
        if query_features is None or gallery_features is None:
            raise MdprError("Pass both --query-features and --gallery-features (one store each).")
        if save_features is not None or flip:
            raise MdprError("--save-features and --flip apply to extraction; they cannot be used with stored features.")
        query, gallery = _load_store(query_features, "query"), _load_store(gallery_features, "gallery")
    elif dataset is not None and weights is not None:
        query, gallery = _extract(dataset, weights, flip, device, batch_size, num_workers, save_features)
    else:
        raise MdprError(
            "Say what to evaluate: --dataset NAME --weights CKPT, or --query-features q.h5 --gallery-features g.h5."
        )
    _check_pair(query, gallery)
    if query.flip is not None and gallery.flip is not None and query.flip != gallery.flip:
        raise MdprError("One feature store was extracted with --flip and the other without; extract both the same way.")
    if metric is Metric.euclidean and query.normalized is not None and query.normalized != gallery.normalized:
        raise MdprError(
            "One feature store holds L2-normalised features and the other raw ones, so Euclidean distances between "
            "them are meaningless; use --metric cosine or extract both the same way."
        )
    query, q_dropped = _usable(query, cross_camera_only)
    gallery, g_dropped = _usable(gallery, cross_camera_only)

    started = time.perf_counter()
    qf, gf = query.features, gallery.features
    if use_aqe:
        qf, gf = aqe(qf, gf, qe_times=1, qe_k=aqe_k, alpha=aqe_alpha)
    if rerank:
        n = len(qf) + len(gf)
        if n >= _ANNOUNCE_RERANK_IMAGES:
            est = estimate_re_rank(len(qf), len(gf), qf.shape[1])
            err_console.print(
                f"Re-ranking {n:,} images ({rerank_method.value}): about {est['seconds']:.0f} s and "
                f"{est['bytes'] / 2**30:.1f} GB of memory.", highlight=False)
        distmat = _rerank_with_bar(lambda progress: re_rank(
            qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, method=rerank_method.value, metric=metric.value,
            progress=progress))
    else:
        distmat = compute_distance(qf, gf, "cosine" if metric is Metric.cosine else "sqeuclidean")
    result = evaluate(distmat, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=max_rank,
                      cross_camera_only=cross_camera_only, ap=ap.value, cuhk03_classic=cuhk03_classic, seed=seed)
    elapsed = time.perf_counter() - started
    if result["num_valid"] == 0:
        raise MdprError(
            f"None of the {result['num_queries']} queries has a true match in the gallery under this protocol; "
            "check that query and gallery share person ids (or pass --no-cross-camera-only for single-camera data)."
        )

    protocol = _protocol_line(metric, rerank, rerank_method, k1, k2, lambda_value, use_aqe, aqe_k, aqe_alpha,
                              cross_camera_only, ap, cuhk03_classic, seed, len(result["cmc"]))
    cmc = np.asarray(result["cmc"], dtype=np.float64)
    summary: Dict[str, Any] = {
        "mAP": result["mAP"],
        "mINP": result["mINP"],
        "rank1": _rank(cmc, 1),
        "rank5": _rank(cmc, 5),
        "rank10": _rank(cmc, 10),
        "cmc": [float(x) for x in cmc],
        "num_queries": result["num_queries"],
        "num_valid_queries": result["num_valid"],
        "num_skipped_queries": result["num_skipped"],
        "num_gallery": int(len(gallery.pids)),
        "unlabelled_dropped": {"query": q_dropped, "gallery": g_dropped},
        "unreadable_images": len(query.unreadable) + len(gallery.unreadable),
        "protocol": protocol,
        "seconds": round(elapsed, 3),
    }
    if save_metrics is not None:
        atomic_write_text(save_metrics, json.dumps(summary, indent=2) + "\n")
    if json_output:
        print_json(summary)
        return
    _print_table(summary, query, gallery)


def _rank(cmc: Any, k: int) -> float:
    return float(cmc[min(k, len(cmc)) - 1])


def _protocol_line(metric: Metric, rerank: bool, method: RerankMethod, k1: int, k2: int, lam: float, use_aqe: bool,
                   aqe_k: int, aqe_alpha: float, cross_camera_only: bool, ap: APVariant, cuhk03: bool, seed: int,
                   num_ranks: int) -> str:
    parts = [
        "cross-camera (same id + same camera removed)" if cross_camera_only
        else "single-camera (nothing removed: --no-cross-camera-only)",
        f"CMC@1-{num_ranks}" + (f" single-gallery-shot (CUHK03 classic, 10 draws, seed {seed})" if cuhk03 else ""),
        "trapezoidal AP (Market-1501 devkit)" if ap is APVariant.trapezoid else "non-interpolated AP",
        "mINP",
        "cosine distance" if metric is Metric.cosine else "squared Euclidean distance",
        "ties by gallery order",
    ]
    if use_aqe:
        parts.append(f"alpha-QE (k {aqe_k}, alpha {aqe_alpha:g})")
    if rerank:
        parts.append(f"{method.value} re-ranking (k1 {k1}, k2 {k2}, lambda {lam:g})")
    return ", ".join(parts)


def _print_table(summary: Dict[str, Any], query: _Side, gallery: _Side) -> None:
    from rich.table import Table

    table = Table(title=f"{query.source} vs {gallery.source}", title_justify="left")
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
