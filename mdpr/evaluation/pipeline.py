"""The one evaluation pipeline: labelled query and gallery features in, one :class:`EvaluationResult` out.

Used by ``mdpr evaluate`` (features extracted from a dataset or read from two stores), by training's
periodic evaluation and by the demo, so that all of them drop the same unlabelled images, apply the
same query expansion / re-ranking / distance and report the same keys.

Distance vocabulary (shared with ``mdpr query``): ``cosine`` is 1 - cosine similarity, ``euclidean`` the
(true, not squared) Euclidean distance. Ranking by the Euclidean distance equals ranking by fast-reid's
squared distance, so the metrics are the same; re-ranking works on squared distances internally as
fast-reid does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from mdpr.errors import MdprError
from mdpr.evaluation.distance import METRICS, compute_distance
from mdpr.evaluation.metrics import evaluate
from mdpr.evaluation.query_expansion import aqe
from mdpr.evaluation.rerank import METHODS, estimate_re_rank, re_rank

AP_VARIANTS = ("standard", "trapezoid")

#: ``progress(stage, done, total)``: stages "rerank:neighbours", "rerank:encoding", "rerank:jaccard".
Progress = Callable[[str, int, int], None]
#: ``note(message)``: something the user should know before a long step (re-ranking time and memory).
Note = Callable[[str], None]

#: Above this many images re-ranking announces its time and memory estimate before starting.
ANNOUNCE_RERANK_IMAGES = 5000


@dataclass
class LabelledFeatures:
    """Features of the query or the gallery set with their labels and where they came from."""

    name: str  #: "query" or "gallery"
    features: np.ndarray  #: (N, D) float32
    pids: np.ndarray  #: (N,) int64, -1 = unknown
    camids: np.ndarray  #: (N,) int64, -1 = unknown
    source: str  #: a store path or "dataset/split", for messages and the table title
    fingerprint: str = ""
    flip: Optional[bool] = None
    normalized: Optional[bool] = None
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  #: (path, reason) skipped at extraction


@dataclass
class Protocol:
    """How to rank and score (the defaults are the paper's evaluation)."""

    metric: str = "cosine"
    rerank: bool = False
    rerank_method: str = "jaccard"
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    aqe: bool = False
    aqe_k: int = 5
    aqe_alpha: float = 3.0
    cross_camera_only: bool = True
    ap: str = "standard"
    cuhk03_classic: bool = False
    seed: int = 0
    max_rank: int = 50

    def validate(self) -> None:
        """One sentence, naming the setting, for each impossible value."""
        if self.metric not in METRICS:
            raise MdprError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}.")
        if self.rerank_method not in METHODS:
            raise MdprError(f"rerank_method must be one of {', '.join(METHODS)}, not {self.rerank_method!r}.")
        if self.ap not in AP_VARIANTS:
            raise MdprError(f"ap must be one of {', '.join(AP_VARIANTS)}, not {self.ap!r}.")
        for name in ("k1", "k2", "aqe_k", "max_rank"):
            value = getattr(self, name)
            if not 1 <= value <= 10_000:
                raise MdprError(f"{name} must be between 1 and 10000, got {value}.")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise MdprError(f"lambda_value must lie in [0, 1], got {self.lambda_value}.")
        if not 0.0 <= self.aqe_alpha <= 100.0:
            raise MdprError(f"aqe_alpha must lie in [0, 100], got {self.aqe_alpha}.")

    def describe(self, num_ranks: int) -> str:
        """The protocol in words, as printed under the results table."""
        parts = [
            "cross-camera (same id + same camera removed)" if self.cross_camera_only
            else "single-camera (nothing removed: --no-cross-camera-only)",
            f"CMC@1-{num_ranks}"
            + (f" single-gallery-shot (CUHK03 classic, 10 draws, seed {self.seed})" if self.cuhk03_classic else ""),
            "trapezoidal AP (Market-1501 devkit)" if self.ap == "trapezoid" else "non-interpolated AP",
            "mINP",
            f"{METRICS[self.metric]}",
            "ties by gallery order",
        ]
        if self.aqe:
            parts.append(f"alpha-QE (k {self.aqe_k}, alpha {self.aqe_alpha:g})")
        if self.rerank:
            parts.append(f"{self.rerank_method} re-ranking (k1 {self.k1}, k2 {self.k2}, lambda {self.lambda_value:g})")
        return ", ".join(parts)


@dataclass
class EvaluationResult:
    """The one result schema of every evaluation (``to_dict`` is what ``--json`` prints)."""

    mAP: float
    mINP: float
    rank1: float
    rank5: float
    rank10: float
    cmc: List[float]
    num_queries: int  #: labelled queries evaluated
    num_valid_queries: int  #: queries with at least one true match under the protocol
    num_skipped_queries: int
    num_gallery: int
    unlabelled_dropped: Dict[str, int]  #: {"query": n, "gallery": n} images without a person id
    unreadable_images: int
    protocol: str
    seconds: float
    query_source: str = ""
    gallery_source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_comparable(query: LabelledFeatures, gallery: LabelledFeatures, metric: str) -> None:
    """Query and gallery must have the same dimension, flip option and normalisation (that they come from the
    same weights is :func:`mdpr.store.check_same_weights`, checked where stores are read)."""
    qd, gd = query.features.shape[1], gallery.features.shape[1]
    if qd != gd:
        raise MdprError(
            f"The query features ({query.source}) are {qd}-d but the gallery features ({gallery.source}) are {gd}-d; "
            "extract both with the same model."
        )
    if query.flip is not None and gallery.flip is not None and query.flip != gallery.flip:
        raise MdprError("One feature set was extracted with flip averaging and the other without; extract both the "
                        "same way.")
    if (metric == "euclidean" and query.normalized is not None and gallery.normalized is not None
            and query.normalized != gallery.normalized):
        raise MdprError(
            "One feature set holds L2-normalised features and the other raw ones, so Euclidean distances between "
            "them are meaningless; use the cosine metric or extract both the same way."
        )


def drop_unlabelled(side: LabelledFeatures, cross_camera_only: bool) -> Tuple[LabelledFeatures, int]:
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
            "evaluate them with cross_camera_only=False (single-camera data)."
        )
    if dropped:
        side = LabelledFeatures(side.name, side.features[keep], side.pids[keep], side.camids[keep], side.source,
                                side.fingerprint, side.flip, side.normalized, side.unreadable)
    return side, dropped


def _rank(cmc: np.ndarray, k: int) -> float:
    return float(cmc[min(k, len(cmc)) - 1]) if len(cmc) else 0.0


def evaluate_features(
    query: LabelledFeatures,
    gallery: LabelledFeatures,
    protocol: Optional[Protocol] = None,
    *,
    progress: Optional[Progress] = None,
    note: Optional[Note] = None,
) -> EvaluationResult:
    """Rank ``gallery`` for every ``query`` under ``protocol`` and score it (CMC, mAP, mINP)."""
    protocol = protocol or Protocol()
    protocol.validate()
    check_comparable(query, gallery, protocol.metric)
    query, q_dropped = drop_unlabelled(query, protocol.cross_camera_only)
    gallery, g_dropped = drop_unlabelled(gallery, protocol.cross_camera_only)

    started = time.perf_counter()
    qf, gf = query.features, gallery.features
    if protocol.aqe:
        qf, gf = aqe(qf, gf, qe_times=1, qe_k=protocol.aqe_k, alpha=protocol.aqe_alpha)
    if protocol.rerank:
        n = len(qf) + len(gf)
        if n >= ANNOUNCE_RERANK_IMAGES and note is not None:
            est = estimate_re_rank(len(qf), len(gf), qf.shape[1])
            note(f"Re-ranking {n:,} images ({protocol.rerank_method}): about {est['seconds']:.0f} s and "
                 f"{est['bytes'] / 2**30:.1f} GB of memory.")
        rerank_progress = (lambda stage, done, total: progress(f"rerank:{stage}", done, total)) if progress else None
        distmat = re_rank(qf, gf, k1=protocol.k1, k2=protocol.k2, lambda_value=protocol.lambda_value,
                          method=protocol.rerank_method, metric=protocol.metric, progress=rerank_progress)
    else:
        distmat = compute_distance(qf, gf, protocol.metric)
    result = evaluate(distmat, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=protocol.max_rank,
                      cross_camera_only=protocol.cross_camera_only, ap=protocol.ap,
                      cuhk03_classic=protocol.cuhk03_classic, seed=protocol.seed)
    elapsed = time.perf_counter() - started
    if result["num_valid"] == 0:
        raise MdprError(
            f"None of the {result['num_queries']} queries has a true match in the gallery under this protocol; "
            "check that query and gallery share person ids (or evaluate single-camera data with "
            "cross_camera_only=False)."
        )
    cmc = np.asarray(result["cmc"], dtype=np.float64)
    return EvaluationResult(
        mAP=float(result["mAP"]),
        mINP=float(result["mINP"]),
        rank1=_rank(cmc, 1),
        rank5=_rank(cmc, 5),
        rank10=_rank(cmc, 10),
        cmc=[float(x) for x in cmc],
        num_queries=int(result["num_queries"]),
        num_valid_queries=int(result["num_valid"]),
        num_skipped_queries=int(result["num_skipped"]),
        num_gallery=int(len(gallery.pids)),
        unlabelled_dropped={"query": q_dropped, "gallery": g_dropped},
        unreadable_images=len(query.unreadable) + len(gallery.unreadable),
        protocol=protocol.describe(len(cmc)),
        seconds=round(elapsed, 3),
        query_source=query.source,
        gallery_source=gallery.source,
    )
