"""``mdpr query``: rank a feature store against probe images (exact search; optional re-ranking)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from mdpr.errors import MdprError

Note = Callable[[str], None]


@dataclass
class QueryRequest:
    """Probes (files or folders) against the store ``gallery``, embedded with ``weights``."""

    probes: List[Path]
    gallery: Optional[Path] = None  #: None: the most recently written store
    weights: Optional[Path] = None  #: None: the checkpoint recorded in the store
    top_k: int = 10
    rerank: bool = False
    rerank_pool: int = 100
    metric: str = "cosine"
    device: str = "auto"
    threads: Optional[int] = None
    workers: int = 1  #: threads decoding the probe images
    index: str = "auto"  #: "auto" (a fresh index beside the store, else exact), "exact", or an index folder
    nprobe: Optional[int] = None  #: IVF-PQ cells visited (overrides the index's tuned value)
    ef: Optional[int] = None  #: HNSW search breadth (overrides the index's tuned value)
    backend: Optional[str] = None  #: torch, onnxruntime or openvino (fp32 backends of the same weights agree)
    allow_mixed_precision: bool = False  #: accept INT8 probes against fp32 rows (or the reverse)
    picture: Optional[Path] = None  #: write a ranked-list PNG here


@dataclass
class ProbeResult:
    """One probe's ranked gallery rows: ``rank``, ``path``, ``distance``, ``pid``, ``camid`` (None = unknown)."""

    probe: Path
    results: List[Dict[str, Any]]


@dataclass
class QueryResult:
    probes: List[ProbeResult]
    gallery: Path
    weights: Optional[Path]
    reranked: bool
    incomplete_store: bool  #: an extraction into the store was interrupted (rows may be missing)
    picture: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> List[Dict[str, Any]]:
        """What ``--json`` prints: one object per probe."""
        return [{"probe": str(p.probe), "results": p.results} for p in self.probes]


def run_query(request: QueryRequest, note: Optional[Note] = None) -> QueryResult:
    """Embed the probes with the store's own weights and list the nearest gallery rows."""
    from mdpr.data.images import decode_images
    from mdpr.fileio import check_output_file
    from mdpr.inference import FeatureExtractor, check_precision_match, image_files
    from mdpr.runtime import cpu_threads
    from mdpr.search import METRICS, open_index, ranked_results
    from mdpr.store import FeatureStore, check_same_weights

    if request.metric not in METRICS:
        raise MdprError(f"metric must be one of {', '.join(METRICS)}, not {request.metric!r}.")
    if request.top_k < 1:
        raise MdprError(f"top_k must be at least 1, got {request.top_k}.")
    if request.picture is not None:
        if request.picture.suffix.lower() != ".png":
            raise MdprError(f"The ranked-list picture is a PNG; give it a .png file name instead of {request.picture}.")
        check_output_file(request.picture, "the ranked-list picture")
    probe_paths = image_files(request.probes, "Probe image")
    probe_images = decode_images(probe_paths, "Probe image", request.workers)  # refused before the model loads
    notes: List[str] = []

    def say(message: str) -> None:
        notes.append(message)
        if note is not None:
            note(message)

    gallery = request.gallery
    if gallery is None:
        from mdpr.workflows.history import latest_store

        gallery = latest_store()
        say(f"searching the most recent store {gallery} (choose another with gallery STORE).")
    with FeatureStore.open(gallery) as store, cpu_threads(request.threads) as (_, why):
        if len(store) == 0:
            raise MdprError(f"Feature store {gallery} is empty; add images with `mdpr extract --output {gallery}`.")
        weights = request.weights
        if weights is None:
            weights = _recorded_weights(store)
        incomplete = bool(store.has_pending_journal or not store.complete)
        if incomplete:
            say(f"{gallery} is incomplete (an extraction was interrupted); re-run the same `mdpr extract` "
                "command to finish it.")
        extractor = FeatureExtractor(weights, device=request.device, num_workers=0, flip=store.flip,
                                     backend=request.backend)
        if request.weights is None and store.fingerprint and extractor.fingerprint != store.fingerprint:
            raise MdprError(f"The checkpoint {weights} that made {gallery} has changed since (fingerprint "
                            f"{extractor.fingerprint[:16]} now, {store.fingerprint[:16]} then); pass weights CKPT with "
                            "the weights that made it, or extract the store again.", keys=["weights CKPT"])
        check_same_weights(store, extractor.fingerprint, f"the weights {weights}")
        check_precision_match(store.meta.precision, extractor.precision,
                              allow_mixed_precision=request.allow_mixed_precision, where=f"The feature store {gallery}")
        if why == "busy" and extractor.device.type == "cpu":
            say("the CPU is busy with other processes, so the model runs on 1 thread (faster then); choose with "
                "threads.")
        probe_feats = extractor(probe_images)
        bad = store.non_finite_rows()
        if len(bad):
            say(f"{len(bad)} row(s) of {gallery} hold NaN or infinite features (e.g. row {int(bad[0])}, "
                f"{store.paths[int(bad[0])]}) and are left out of the results; extract those images again.")
        index, which = open_index(store, request.index, request.metric, nprobe=request.nprobe, ef=request.ef)
        if request.index != "exact" and not which.startswith("Exact search over"):
            say(which)
        # an index gives a shortlist; its distances are recomputed exactly from the store
        found = index.search(probe_feats, top_k=min(request.top_k + len(bad), len(store)), rerank=request.rerank,
                             rerank_pool=request.rerank_pool + len(bad))
        if len(bad):
            found = _without_rows(found, bad, request.top_k)
        rows = ranked_results(store, found)
        if request.picture is not None:
            _save_picture(store, probe_paths, rows, request.picture)
    return QueryResult([ProbeResult(p, r) for p, r in zip(probe_paths, rows)], gallery, weights,
                       request.rerank, incomplete, request.picture, notes)


def _without_rows(found: Any, rows: Any, top_k: int) -> Any:
    """``found`` without the gallery ``rows`` (and without non-finite distances), ``top_k`` per probe at most."""
    import numpy as np

    keep = [(~np.isin(idx, rows)) & np.isfinite(dist) for idx, dist in zip(found.indices, found.distances)]
    k = min([top_k] + [int(m.sum()) for m in keep])
    indices = np.stack([idx[m][:k] for idx, m in zip(found.indices, keep)]) if keep else found.indices[:, :0]
    distances = np.stack([d[m][:k] for d, m in zip(found.distances, keep)]) if keep else found.distances[:, :0]
    return type(found)(indices, distances)


def _recorded_weights(store: Any) -> Path:
    """The checkpoint a store records as its maker, refused in one sentence when it is gone."""
    if not store.weights:
        raise MdprError(f"{store.path} does not record the checkpoint that made it (written by an earlier version or "
                        "another tool); pass weights CKPT.", keys=["weights CKPT"])
    recorded = Path(store.weights)
    if not recorded.is_file():
        raise MdprError(f"The checkpoint {recorded} that made {store.path} no longer exists; pass weights CKPT with "
                        "the same weights, or extract the store again.", keys=["weights CKPT"])
    return recorded


def _save_picture(store: Any, probe_paths: List[Path], results: List[List[Dict[str, Any]]], target: Path) -> None:
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
    save_ranked_lists(rows, target, thumb_size=thumb)

