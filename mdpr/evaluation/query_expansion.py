"""Alpha query expansion (alpha-QE, Radenovic et al.), as fast-reid's ``aqe``."""

from __future__ import annotations

from typing import Any

import numpy as np

from mdpr.errors import MdprError
from mdpr.evaluation.distance import as_features, check_same_dim
from mdpr.runtime import l2_normalize

_CHUNK_ROWS = 2048
_BLOCK_BYTES = 64 * 2**20  # one chunk of the similarity matrix


def _top_similar(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of each row's k most similar rows (itself included).

    Computed in chunks of rows; ties go to the smaller index.
    """
    import torch

    n = unit.shape[0]
    k = min(k, n)
    keep = min(n, k + 4)  # a margin to resolve ties at the k-th place exactly
    all_t = torch.from_numpy(unit)
    index = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    step = max(16, min(_CHUNK_ROWS, _BLOCK_BYTES // (4 * n)))
    for start in range(0, n, step):
        block = torch.mm(all_t[start : start + step], all_t.T)
        top, where = torch.topk(block, keep, dim=1)
        top_np, where_np = top.numpy(), where.numpy()
        tied = np.flatnonzero(top_np[:, k - 1] == top_np[:, keep - 1]) if keep > k else np.zeros(0, dtype=int)
        for row in tied:
            order = np.argsort(-block[row].numpy(), kind="stable")[:keep]
            where_np[row], top_np[row] = order, block[row].numpy()[order]
        order = np.lexsort((where_np, -top_np), axis=1)[:, :k]
        index[start : start + block.shape[0]] = np.take_along_axis(where_np, order, 1)
        sims[start : start + block.shape[0]] = np.take_along_axis(top_np, order, 1)
    return index, sims


def aqe(qf: Any, gf: Any, qe_times: int = 1, qe_k: int = 5, alpha: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Alpha query expansion over query and gallery jointly; returns new (qf, gf) float32 arrays.

    Each feature is replaced by the mean of its ``qe_k`` most cosine-similar features (itself
    included, from query and gallery together), each weighted by ``similarity ** alpha``; repeated
    ``qe_times`` times. The averaged features are the *unnormalised* inputs, as in fast-reid.
    """
    if qe_times < 1 or qe_k < 1:
        raise MdprError(f"qe_times and qe_k must be at least 1, got qe_times={qe_times}, qe_k={qe_k}.")
    q = as_features(qf, "query features")
    g = as_features(gf, "gallery features")
    check_same_dim(q, g)
    feats = np.concatenate([q, g])
    unit = l2_normalize(feats)
    for _ in range(qe_times):
        index, sims = _top_similar(unit, qe_k)
        weights = np.power(sims, np.float32(alpha))
        expanded = np.empty_like(feats)
        for start in range(0, feats.shape[0], _CHUNK_ROWS):
            idx = index[start : start + _CHUNK_ROWS]
            w = weights[start : start + _CHUNK_ROWS]
            expanded[start : start + idx.shape[0]] = np.einsum("nk,nkd->nd", w, feats[idx]) / idx.shape[1]
        feats = expanded
        unit = l2_normalize(feats)
    return feats[: q.shape[0]].copy(), feats[q.shape[0] :].copy()
