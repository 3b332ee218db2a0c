"""Distance matrices between feature sets, computed in chunks of query rows."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from mdpr.errors import MdprError
from mdpr.runtime import l2_normalize

#: The distance vocabulary of every command (evaluate, query, index): name -> meaning. Ranking by the
#: Euclidean distance equals ranking by fast-reid's squared distance (``sqeuclidean``, internal only).
METRICS = {"cosine": "1 - cosine similarity", "euclidean": "Euclidean distance"}

#: Names :func:`compute_distance` accepts: the vocabulary plus the internal squared distance.
COMPUTABLE = (*METRICS, "sqeuclidean")

# Rows of the query set multiplied at once; bounds the scratch memory of one chunk.
_CHUNK_ROWS = 4096


def as_features(features: Any, name: str) -> np.ndarray:
    """A float32 (N, D) array from a numpy array, torch tensor or nested list, validated."""
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().numpy()
    arr = np.asarray(features, dtype=np.float32)
    if arr.ndim != 2:
        raise MdprError(f"{name} must be a 2-D array (images x dimensions), got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise MdprError(f"{name} is empty; evaluation needs at least one image on each side.")
    if not np.isfinite(arr).all():
        raise MdprError(f"{name} contain NaN or infinite values; re-extract them with a working model.")
    return arr


def check_same_dim(qf: np.ndarray, gf: np.ndarray) -> None:
    """Raise a clear error when query and gallery features have different dimensions."""
    if qf.shape[1] != gf.shape[1]:
        raise MdprError(
            f"query features have dimension {qf.shape[1]} but gallery features have {gf.shape[1]}; "
            "extract both sets with the same model."
        )


def compute_distance(
    qf: Any, gf: Any, metric: str = "cosine", *, out: Optional[np.ndarray] = None, chunk_rows: int = _CHUNK_ROWS
) -> np.ndarray:
    """(num_query, num_gallery) float32 distances, never negative.

    ``cosine``: 1 - cosine similarity (features are L2-normalised first; in [0, 2]).
    ``euclidean``: plain Euclidean distance. ``sqeuclidean``: squared Euclidean distance, which is
    what torchreid and fast-reid call "euclidean" (same ranking as ``euclidean``).
    """
    import torch

    if metric not in COMPUTABLE:
        raise MdprError(f"unknown metric {metric!r}; choose one of {', '.join(COMPUTABLE)}.")
    q = as_features(qf, "query features")
    g = as_features(gf, "gallery features")
    check_same_dim(q, g)
    if metric == "cosine":
        q, g = l2_normalize(q), l2_normalize(g)
    if out is None:
        out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
    gt = torch.from_numpy(g)
    g_sq = (gt * gt).sum(1)
    for start in range(0, q.shape[0], chunk_rows):
        qt = torch.from_numpy(q[start : start + chunk_rows])
        block = torch.from_numpy(out[start : start + chunk_rows])
        torch.mm(qt, gt.T, out=block)
        if metric == "cosine":
            block.neg_().add_(1.0).clamp_(0.0, 2.0)
        else:
            block.mul_(-2.0).add_(g_sq[None, :]).add_((qt * qt).sum(1)[:, None]).clamp_(min=0.0)
            if metric == "euclidean":
                block.sqrt_()
    return out
