"""Exact top-k search over a store equals a brute-force numpy search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mdpr.search.exact as search_mod
from mdpr.errors import MdprError
from mdpr.search import GalleryIndex, ranked_results, search
from mdpr.store import FeatureStore, StoreMeta, write_store


def _brute_force(probes: np.ndarray, gallery: np.ndarray, metric: str, unit_rows: bool = False) -> np.ndarray:
    """Distances in float64. ``unit_rows``: the rows are L2-normalised as stored (float16 rounding included)."""
    q = probes.astype(np.float64)
    g = gallery.astype(np.float64)
    if unit_rows:
        if metric == "cosine":
            return 1.0 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ g.T
        return np.sqrt(np.maximum((q * q).sum(1, keepdims=True) + 1.0 - 2.0 * q @ g.T, 0.0))
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_store_search_equals_brute_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, normalized: bool, metric: str
) -> None:
    rng = np.random.default_rng(7)
    gallery = rng.standard_normal((3000, 24)).astype(np.float32) * rng.uniform(0.5, 3, (3000, 1)).astype(np.float32)
    probes = rng.standard_normal((4, 24)).astype(np.float32)
    meta = StoreMeta(dim=24, dtype=dtype, normalized=normalized, fingerprint="x")
    write_store(tmp_path / "g.h5", meta, gallery, [f"{i}.jpg" for i in range(3000)])
    # a tiny score buffer forces many partial top-k merges
    monkeypatch.setattr(search_mod, "SCORE_BUFFER_BYTES", 4 * 4 * 500)
    with FeatureStore.open(tmp_path / "g.h5") as store:
        stored = store.read_features(np.float64)
        ref = _brute_force(probes, stored, metric, unit_rows=normalized)
        expected = np.argsort(ref, axis=1, kind="stable")[:, :9]
        for gal in (store, GalleryIndex.from_store(store), GalleryIndex.from_store(store, dtype=np.float16)):
            result = search(gal, probes, top_k=9, metric=metric)
            if isinstance(gal, GalleryIndex) and gal.features.dtype != np.float32 and dtype == "float32":
                continue  # float16 copy of a float32 store: near-ties may swap; covered by the other cases
            np.testing.assert_array_equal(result.indices, expected)
            np.testing.assert_allclose(result.distances, np.take_along_axis(ref, expected, 1), rtol=2e-5, atol=1e-5)
            assert np.all(np.diff(result.distances, axis=1) >= 0)


def test_raw_array_gallery_and_single_probe() -> None:
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((50, 8)).astype(np.float32)
    result = search(gallery, gallery[17], top_k=3)
    assert result.indices.shape == (1, 3) and result.indices[0, 0] == 17
    assert abs(result.distances[0, 0]) < 1e-6
    assert len(result) == 1


def test_top_k_larger_than_gallery_and_empty_gallery(tmp_path: Path) -> None:
    meta = StoreMeta(dim=3, fingerprint="x")
    write_store(tmp_path / "g.h5", meta, np.eye(3), ["a.jpg", "b.jpg", "c.jpg"], pids=[1, 2, -1], camids=[0, -1, 2])
    with FeatureStore.open(tmp_path / "g.h5") as store:
        result = search(store, np.array([1.0, 0.1, 0.0]), top_k=10)
        assert result.indices.tolist() == [[0, 1, 2]]
        rows = ranked_results(store, result, resolve=False)
        assert rows[0][0] == {"rank": 1, "path": "a.jpg", "distance": pytest.approx(0.004963, abs=1e-6),
                              "pid": 1, "camid": 0}
        assert rows[0][1]["camid"] is None and rows[0][2]["pid"] is None
    write_store(tmp_path / "e.h5", meta, np.zeros((0, 3)), [])
    with FeatureStore.open(tmp_path / "e.h5") as store:
        assert search(store, np.ones((2, 3)), top_k=5).indices.shape == (2, 0)


def test_bad_search_input() -> None:
    gallery = np.ones((4, 8), np.float32)
    with pytest.raises(MdprError, match=r"\(Q, 8\)"):
        search(gallery, np.ones(5))
    with pytest.raises(MdprError, match="metric"):
        search(gallery, np.ones(8), metric="manhattan")
    with pytest.raises(MdprError, match="at least 1"):
        search(gallery, np.ones(8), top_k=0)
    with pytest.raises(MdprError, match="NaN"):
        search(gallery, np.full(8, np.nan))


def test_many_probes_take_the_multithreaded_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    gallery = rng.standard_normal((2500, 16)).astype(np.float32)
    probes = rng.standard_normal((search_mod.SINGLE_THREAD_MAX_PROBES + 3, 16)).astype(np.float32)
    write_store(tmp_path / "g.h5", StoreMeta(dim=16, dtype="float16", normalized=False), gallery,
                [f"{i}.jpg" for i in range(2500)])
    monkeypatch.setattr(search_mod, "SCORE_BUFFER_BYTES", 4 * probes.shape[0] * 300)
    with FeatureStore.open(tmp_path / "g.h5") as store:
        ref = _brute_force(probes, store.read_features(np.float64), "cosine")
        result = search(store, probes, top_k=5)
    np.testing.assert_array_equal(result.indices, np.argsort(ref, axis=1, kind="stable")[:, :5])
