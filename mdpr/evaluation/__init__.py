"""Evaluation: CMC / mAP / mINP, distances, k-reciprocal re-ranking and query expansion."""

from __future__ import annotations

from mdpr.evaluation.distance import compute_distance
from mdpr.evaluation.metrics import evaluate
from mdpr.evaluation.query_expansion import aqe
from mdpr.evaluation.rerank import estimate_re_rank, re_rank

__all__ = ["aqe", "compute_distance", "estimate_re_rank", "evaluate", "re_rank"]
