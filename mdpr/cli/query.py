"""``mdpr query``: search a feature store with probe images; table, JSON or a ranked-list picture."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from mdpr.cli.app import command, console, err_console, print_json
from mdpr.errors import MdprError

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


@command("query", help="Search a feature store with probe image(s): ranked paths and distances.", epilog=EXAMPLES)
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
    from mdpr.store import FeatureStore

    if save is not None and save.suffix.lower() != ".png":
        raise MdprError(f"--save writes a PNG picture; give it a .png file name instead of {save}.")
    probe_paths = _probe_files(probes)
    probe_images = _decode(probe_paths)  # unreadable probes are refused before the model is loaded
    with FeatureStore.open(gallery) as store:
        if len(store) == 0:
            raise MdprError(f"Feature store {gallery} is empty; add images with `mdpr extract --output {gallery}`.")
        if store.has_pending_journal or not store.complete:
            err_console.print(f"[yellow]Note:[/] {gallery} is incomplete (an extraction was interrupted); re-run "
                              "the same `mdpr extract` command to finish it.", highlight=False)
        results = _search(store, probe_images, weights, device, threads, top_k, rerank, rerank_pool, metric.value)
        if save is not None:
            _save_picture(store, probe_paths, results, save)
    if as_json:
        print_json([{"probe": str(p), "results": rows} for p, rows in zip(probe_paths, results)])
    else:
        _print_tables(probe_paths, results, rerank)
    if save is not None:
        err_console.print(f"Saved the ranked list picture to {save}.", highlight=False)


def _probe_files(probes: List[Path]) -> List[Path]:
    from mdpr.data.images import find_images

    files: List[Path] = []
    for p in probes:
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise MdprError(f"Probe folder {p} holds no images; pass image files or a folder of images.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise MdprError(f"Probe image {p} does not exist; pass an existing image file.")
    return files


def _decode(paths: List[Path]) -> List[Any]:
    from mdpr.data.images import ImageReadError, load_rgb

    images = []
    for p in paths:
        try:
            images.append(load_rgb(p))
        except ImageReadError as exc:
            reason = str(exc).removeprefix(f"{p}: ")
            raise MdprError(f"Probe image {p} could not be read ({reason}); pass a JPEG, PNG, BMP or WebP file.") from None
    return images


def _search(store: Any, probe_images: List[Any], weights: Path, device: str, threads: Optional[int], top_k: int,
            rerank: bool, rerank_pool: int, metric: str) -> List[List[Dict[str, Any]]]:
    from mdpr.cli.extract import _busy_note, _set_threads
    from mdpr.inference import FeatureExtractor
    from mdpr.search import ranked_results, search

    busy = _set_threads(threads)
    extractor = FeatureExtractor(weights, device=device, num_workers=0, flip=store.flip)
    if extractor.fingerprint != store.fingerprint:
        raise MdprError(
            f"The weights {weights} (fingerprint {extractor.fingerprint}) are not the ones that made {store.path} "
            f"(fingerprint {store.fingerprint or 'none'}); query with the same weights, or re-extract the gallery "
            f"with `mdpr extract --weights {weights}`."
        )
    if busy and extractor.device.type == "cpu":
        _busy_note()
    probe_feats = extractor(probe_images)
    result = search(store, probe_feats, top_k=top_k, metric=metric, rerank=rerank, rerank_pool=rerank_pool)
    return ranked_results(store, result)


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


def _save_picture(store: Any, probe_paths: List[Path], results: List[List[Dict[str, Any]]], save: Path) -> None:
    from mdpr.data.images import parse_market_name
    from mdpr.viz import PROBE, RankedRow, Tile, match_color, save_ranked_lists

    size = store.preprocessing.get("size") or [128, 64]
    thumb = (128, max(32, round(128 * size[1] / size[0])))
    rows = []
    for probe, hits in zip(probe_paths, results):
        parsed = parse_market_name(probe)
        probe_pid = parsed[0] if parsed is not None and parsed[0] >= 0 else None
        caption = ("probe", f"pid {probe_pid}" if probe_pid is not None else probe.name)
        tiles = [
            Tile(Path(h["path"]), (f"#{h['rank']}  {h['distance']:.3f}", f"pid {h['pid']}" if h["pid"] is not None else ""),
                 match_color(probe_pid, h["pid"]))
            for h in hits
        ]
        rows.append(RankedRow(Tile(probe, caption, PROBE), tiles))
    save_ranked_lists(rows, save, thumb_size=thumb)
