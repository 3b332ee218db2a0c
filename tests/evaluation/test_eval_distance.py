"""Chunked distances and alpha query expansion against dense transcriptions."""

from __future__ import annotations

import numpy as np
import pytest

from mdpr.errors import MdprError
from mdpr.evaluation import aqe, compute_distance
from mdpr.evaluation import query_expansion as qe_module


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.standard_normal((37, 24)).astype(np.float32), rng.standard_normal((53, 24)).astype(np.float32) * 3


def test_metrics_match_dense_formulas(feats):
    q, g = (f.astype(np.float64) for f in feats)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    sq = ((q[:, None] - g[None]) ** 2).sum(-1)
    expected = {"cosine": 1 - qn @ gn.T, "sqeuclidean": sq, "euclidean": np.sqrt(sq)}
    for metric, ref in expected.items():
        out = compute_distance(*feats, metric=metric, chunk_rows=5)
        assert out.dtype == np.float32 and out.shape == (37, 53)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_no_negative_distances():
    x = np.tile(np.float32([[0.3, 0.7, 1e-3]]), (4, 1))
    for metric in ("cosine", "euclidean", "sqeuclidean"):
        assert (compute_distance(x, x, metric) >= 0).all()


def test_torch_input_and_errors(feats):
    torch = pytest.importorskip("torch")
    out = compute_distance(torch.from_numpy(feats[0]), torch.from_numpy(feats[1]))
    np.testing.assert_allclose(out, compute_distance(*feats), atol=1e-6)
    with pytest.raises(MdprError, match="dimension 24 but gallery features have 3"):
        compute_distance(feats[0], feats[1][:, :3])
    with pytest.raises(MdprError, match="empty"):
        compute_distance(feats[0][:0], feats[1])
    with pytest.raises(MdprError, match="NaN"):
        compute_distance(np.full((2, 24), np.nan, np.float32), feats[1])
    with pytest.raises(MdprError, match="unknown metric"):
        compute_distance(*feats, metric="manhattan")


def dense_aqe(qf, gf, qe_times=1, qe_k=5, alpha=3.0):
    """fast-reid's aqe written densely: weighted mean of the top-k most similar (self included)."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    for _ in range(qe_times):
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sims = unit @ unit.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :qe_k]
        weights = np.take_along_axis(sims, top, 1) ** alpha
        feats = (feats[top] * weights[..., None]).mean(1)
    return feats[: len(qf)], feats[len(qf):]


@pytest.mark.parametrize("qe_times,qe_k,alpha", [(1, 5, 3.0), (2, 3, 1.0), (1, 1, 3.0)])
def test_aqe_matches_dense(feats, qe_times, qe_k, alpha, monkeypatch):
    monkeypatch.setattr(qe_module, "_CHUNK_ROWS", 7)
    q, g = aqe(*feats, qe_times=qe_times, qe_k=qe_k, alpha=alpha)
    rq, rg = dense_aqe(*feats, qe_times=qe_times, qe_k=qe_k, alpha=alpha)
    assert q.dtype == np.float32 and q.shape == feats[0].shape and g.shape == feats[1].shape
    np.testing.assert_allclose(q, rq, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-5)


def test_aqe_ties_go_to_the_smaller_index():
    x = np.float32([[1, 0], [1, 0], [1, 0], [0, 1], [0.6, 0.8]])
    q, g = aqe(x[:2], x[2:], qe_k=2, alpha=1.0)
    # rows 0-2 are identical; each averages itself-or-earlier copies: the mean stays [1, 0]
    np.testing.assert_allclose(np.r_[q, g][:3], [[1, 0]] * 3, atol=1e-6)
    with pytest.raises(MdprError, match="qe_k"):
        aqe(x[:2], x[2:], qe_k=0)
