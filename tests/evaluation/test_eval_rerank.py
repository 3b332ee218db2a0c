"""Re-ranking equals dense transcriptions of the classic formulas on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from mdpr.errors import MdprError
from mdpr.evaluation import re_rank
from mdpr.evaluation import rerank as rerank_module


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = rank[i, :k]
    return np.array([j for j in forward if i in rank[j, :k]], dtype=np.int64)


def _expansion(rank: np.ndarray, i: int, k_full: int, k_half: int) -> np.ndarray:
    base = _reciprocal(rank, i, k_full)
    members = set(base.tolist())
    for c in base:
        cand = _reciprocal(rank, c, k_half)
        if len(set(cand.tolist()) & set(base.tolist())) > 2.0 / 3.0 * len(cand):
            members |= set(cand.tolist())
    return np.array(sorted(members), dtype=np.int64)


def _dense_jaccard(v: np.ndarray, rank: np.ndarray, k2: int, nq: int) -> np.ndarray:
    n = v.shape[0]
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.empty((nq, n))
    for i in range(nq):
        shared = np.minimum(v[i][None, :], v).sum(1)
        jac[i] = 1.0 - shared / (2.0 - shared)
    return jac


def dense_zhong(qf, gf, k1=20, k2=6, lam=0.3):
    """Zhong et al.'s re_ranking(q_g, q_q, g_g) on plain Euclidean distances, written densely."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    nq, n = qf.shape[0], x.shape[0]
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d2 = d2 / d2.max(axis=1, keepdims=True)  # symmetric: column max == row max
    rank = np.argsort(d2, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0)) + 1
    v = np.zeros((n, n))
    for i in range(n):
        exp = _expansion(rank, i, k1 + 1, half)
        w = np.exp(-d2[i, exp])
        v[i, exp] = w / w.sum()
    jac = _dense_jaccard(v, rank, k2, nq)
    return ((1 - lam) * jac + lam * d2[:nq])[:, nq:]


def dense_fastreid(qf, gf, k1=20, k2=6, lam=0.3, metric="cosine"):
    """fast-reid: compute_jaccard_distance (k1 searched neighbours) mixed with the base distance."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    nq, n = qf.shape[0], x.shape[0]
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    rank = np.argsort(d2, axis=1, kind="stable")[:, :k1]  # the k1-column search result
    half = int(np.around(k1 / 2.0)) + 1
    v = np.zeros((n, n))
    for i in range(n):
        exp = _expansion(rank, i, k1, half)
        w = np.exp(-(d2[i, exp] - d2[i, exp].min()))
        v[i, exp] = w / w.sum()
    jac = np.maximum(_dense_jaccard(v, rank, min(k2, k1), nq), 0.0)
    base = 1.0 - x[:nq] @ x[nq:].T if metric == "cosine" else d2[:nq, nq:]
    return (1 - lam) * jac[:, nq:] + lam * base


def _clustered(rng, n, dim=16, ids=8, noise=0.6):
    centers = rng.standard_normal((ids, dim))
    return (centers[rng.integers(0, ids, n)] + noise * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 3), (5, 1), (4, 9)])
def test_zhong_equals_dense_formula(seed, k1, k2, monkeypatch):
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(rerank_module, "_BLOCK_ROWS", 17)  # many blocks, partial last block
    qf, gf = _clustered(rng, 23), _clustered(rng, 61)
    ours = re_rank(qf, gf, k1=k1, k2=k2, method="zhong", metric="euclidean")
    ref = dense_zhong(qf, gf, k1, k2)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1,k2", [(20, 6), (6, 2), (3, 1)])
def test_jaccard_equals_fastreid_formula(seed, metric, k1, k2, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    monkeypatch.setattr(rerank_module, "_BLOCK_ROWS", 13)
    qf, gf = _clustered(rng, 19), _clustered(rng, 52)
    ours = re_rank(qf, gf, k1=k1, k2=k2, method="jaccard", metric=metric)
    ref = dense_fastreid(qf, gf, k1, k2, metric=metric)
    scale = 1.0 if metric == "cosine" else float(np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, atol=2e-5 * scale)


def test_duplicate_features_break_ties_by_index(monkeypatch):
    rng = np.random.default_rng(7)
    monkeypatch.setattr(rerank_module, "_BLOCK_ROWS", 8)
    recomputed = []
    full_rows = rerank_module._BlockDistances.full_rows
    monkeypatch.setattr(
        rerank_module._BlockDistances,
        "full_rows",
        lambda self, rows, b: recomputed.append(rows.size) or full_rows(self, rows, b),
    )
    base = _clustered(rng, 5, dim=8)
    feats = np.concatenate([base] * 9)  # 9 identical copies of each image: ties everywhere
    qf, gf = feats[:10], feats[10:]
    ours = re_rank(qf, gf, k1=3, k2=2, method="zhong", metric="euclidean")
    assert recomputed, "ties at the k-th neighbour must take the exact path"
    np.testing.assert_allclose(ours, dense_zhong(qf, gf, 3, 2), atol=2e-5)


def test_sparse_neighbours_match_a_full_sort(monkeypatch):
    rng = np.random.default_rng(3)
    monkeypatch.setattr(rerank_module, "_BLOCK_ROWS", 9)
    x = _clustered(rng, 40)
    nb = rerank_module._nearest_neighbours(x, 7, row_max=True)
    d2 = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(nb.index, np.argsort(d2, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(nb.row_max, d2.max(1), rtol=1e-5)


def test_rerank_errors():
    q, g = np.zeros((3, 4), np.float32) + 1, np.ones((5, 4), np.float32)
    with pytest.raises(MdprError, match="method"):
        re_rank(q, g, method="bogus")
    with pytest.raises(MdprError, match="dimension"):
        re_rank(q, np.ones((5, 3), np.float32))
    with pytest.raises(MdprError, match="empty"):
        re_rank(np.zeros((0, 4), np.float32), g)


@pytest.mark.parametrize("num_q,num_g", [(1, 1), (1, 2), (3, 5)])
def test_sets_smaller_than_k1(num_q, num_g):
    rng = np.random.default_rng(num_q * 10 + num_g)
    qf, gf = rng.random((num_q, 4)).astype(np.float32), rng.random((num_g, 4)).astype(np.float32)
    np.testing.assert_allclose(re_rank(qf, gf, method="zhong", metric="euclidean"), dense_zhong(qf, gf), atol=2e-5)
    np.testing.assert_allclose(
        re_rank(qf, gf, method="jaccard", metric="euclidean"), dense_fastreid(qf, gf, metric="euclidean"), atol=2e-5
    )
