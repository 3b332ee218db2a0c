"""Exact nearest-neighbour search of probe features against a gallery (a feature store or an in-memory copy).

The gallery is scanned once, block by block (bounded memory), whatever the number of probes: each
block is converted to float32 in a small reusable buffer, multiplied with all probes at once, and a
running top-k is kept. On disk, blocks are memory-mapped chunks that the kernel reads ahead while the
previous block is being multiplied (see :meth:`mdpr.store.FeatureStore.scan`). With a few probes the
scan is memory-bound and runs on one torch thread (cache-sized pieces, no barrier stalls on a busy
machine); with many it is a matrix product and uses all threads.

Distances: ``cosine`` (default) is ``1 - cos(q, g)`` in [0, 2], correct whether the store holds
L2-normalised features or raw ones (then the gallery norms are computed on the fly); ``euclidean`` is
``||q - g||`` on the features as stored. Ties are broken by row index, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from mdpr.errors import MdprError
from mdpr.evaluation.distance import METRICS as DISTANCE_METRICS
from mdpr.runtime import l2_normalize, torch_threads
from mdpr.store import FeatureStore

METRICS = tuple(DISTANCE_METRICS)  # the one vocabulary (mdpr.evaluation.distance.METRICS)
#: Upper bound on the memory of the block-by-probe score buffer.
SCORE_BUFFER_BYTES = 64 << 20
#: Rows per block when the gallery is already in memory.
MEMORY_BLOCK_ROWS = 1 << 16
#: float32 bytes per converted piece of a float16 block in a single-threaded scan (about the L2 cache).
CAST_PIECE_BYTES = 4 << 20
#: Up to this many probes the scan is memory-bound and runs on one thread (see ``_exact_topk``).
SINGLE_THREAD_MAX_PROBES = 4

Progress = Callable[[int, int], None]


@dataclass
class SearchResult:
    """Per probe, the ``top_k`` gallery rows from nearest to farthest."""

    indices: np.ndarray  #: (Q, k) int64 row numbers in the gallery
    distances: np.ndarray  #: (Q, k) float32

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class GalleryIndex:
    """Gallery features held in memory for repeated searches (a tracker querying many times).

    ``dtype=np.float32`` (default) makes a search cost about one matrix-vector product; float16
    halves the memory and costs a conversion per block.
    """

    def __init__(self, features: Any, normalized: bool = False, dtype: Any = np.float32) -> None:
        feats = np.asarray(features)
        if feats.ndim != 2:
            raise MdprError(f"Gallery features must be an (N, D) array, got shape {feats.shape}.")
        self.features = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.dtype(dtype)))
        self.normalized = bool(normalized)

    @classmethod
    def from_store(cls, store: FeatureStore, dtype: Any = np.float32) -> GalleryIndex:
        """Load a store's features into memory (``len(store) * dim * itemsize`` bytes)."""
        return cls(store.read_features(dtype=dtype), normalized=store.normalized, dtype=dtype)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def blocks(self) -> Iterable[Tuple[int, Any]]:
        if self.features.dtype == torch.float32:
            yield 0, self.features  # no conversion needed: one block, as few (threaded) operations as possible
            return
        for start in range(0, len(self), MEMORY_BLOCK_ROWS):
            yield start, self.features[start : start + MEMORY_BLOCK_ROWS]


Gallery = Union[FeatureStore, GalleryIndex, np.ndarray]


def search(
    gallery: Gallery,
    probes: Any,
    top_k: int = 10,
    metric: str = "cosine",
    *,
    rerank: bool = False,
    rerank_pool: int = 100,
    progress: Optional[Progress] = None,
) -> SearchResult:
    """The ``top_k`` nearest gallery rows for each probe feature ((D,) or (Q, D)).

    ``gallery`` is a :class:`~mdpr.store.FeatureStore` (scanned from disk in chunks), a
    :class:`GalleryIndex`, or an (N, D) array of raw features. ``rerank=True`` re-orders, per probe,
    the ``rerank_pool`` nearest rows with k-reciprocal re-ranking (:func:`mdpr.evaluation.re_rank`);
    the distances are then the re-ranked ones.
    """
    if metric not in METRICS:
        raise MdprError(f"Unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
    if isinstance(gallery, np.ndarray):
        gallery = GalleryIndex(gallery, normalized=False)
    q = as_probes(probes, gallery.dim)
    top_k = check_top_k(top_k)
    n = len(gallery)
    if n == 0 or q.shape[0] == 0:
        return SearchResult(np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32))
    pool = max(top_k, int(rerank_pool)) if rerank else top_k
    normalized = bool(gallery.normalized)
    blocks = gallery.scan() if isinstance(gallery, FeatureStore) else gallery.blocks()
    indices, _ = _exact_topk(blocks, q, min(pool, n), n, metric, normalized, progress)
    if rerank:
        indices, distances = _rerank(gallery, q, indices, metric, min(top_k, n))
        return SearchResult(indices, distances)
    # The scan ranks in float32 with whatever summation order the BLAS kernel picks for a row's position in
    # a block; the rows it returns get their distance recomputed in float64 by the one routine that also
    # rescores an approximate index's shortlist (rescore), so a row's distance never depends on the route.
    return rescore(gallery, q, indices, min(pool, n), metric)


def as_probes(probes: Any, dim: int) -> np.ndarray:
    """Probe features as a (Q, D) float32 array; :class:`MdprError` for a wrong shape or non-finite values."""
    q = np.asarray(probes, dtype=np.float32)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != dim:
        raise MdprError(f"Probe features must be (Q, {dim}) to match the gallery, got shape {q.shape}.")
    if not np.all(np.isfinite(q)):
        raise MdprError("Probe features contain NaN or infinity; check the model and the probe images.")
    return q


def check_top_k(top_k: int) -> int:
    top_k = int(top_k)
    if top_k < 1:
        raise MdprError(f"top_k must be at least 1, not {top_k}.", keys=["top_k"])
    return top_k


def _exact_topk(
    blocks: Iterable[Tuple[int, Any]],
    probes: np.ndarray,
    k: int,
    total: int,
    metric: str,
    normalized: bool,
    progress: Optional[Progress],
) -> Tuple[np.ndarray, np.ndarray]:
    num_probes, dim = probes.shape
    p = torch.from_numpy(l2_normalize(probes) if metric == "cosine" else probes)
    pt = p.t().contiguous()  # (D, Q)
    # Scores: higher is nearer. cosine: q.g (/|g| when raw); euclidean: 2 q.g - |g|^2 (= |q|^2 - d^2).
    rows_cap = max(1, min(total, SCORE_BUFFER_BYTES // (4 * num_probes)))
    scores = torch.empty((rows_cap, num_probes), dtype=torch.float32)
    best_s = torch.empty((0, num_probes), dtype=torch.float32)
    best_i = torch.empty((0, num_probes), dtype=torch.int64)
    buf_start, filled = 0, 0
    convert: Optional[torch.Tensor] = None
    done = 0

    def flush() -> None:
        nonlocal best_s, best_i, buf_start, filled
        if filled == 0:
            return
        s, i = torch.topk(scores[:filled], min(k, filled), dim=0)
        best_s = torch.cat([best_s, s])
        best_i = torch.cat([best_i, i + buf_start])
        if best_s.shape[0] > k:
            best_s, pos = torch.topk(best_s, k, dim=0)
            best_i = torch.gather(best_i, 0, pos)
        buf_start += filled
        filled = 0

    # A few probes make the scan memory-bound: one thread streams it as fast as several, and it avoids
    # the barrier that ends every parallel operation (slow when other processes compete for the cores),
    # so float16 rows can be converted in cache-sized pieces that the product then reads from cache.
    # Many probes make it compute-bound (a matrix product): all threads, few big operations.
    # (float32 blocks need no conversion: one big product per block, with all threads.)
    single = num_probes <= SINGLE_THREAD_MAX_PROBES or torch.get_num_threads() == 1
    cast_rows = max(256, CAST_PIECE_BYTES // (dim * 4)) if single else rows_cap
    with torch.inference_mode():
        for start, block in blocks:
            b = block if isinstance(block, torch.Tensor) else torch.from_numpy(block)
            rows = int(b.shape[0])
            cast = b.dtype != torch.float32
            piece = min(rows_cap, cast_rows) if cast else rows_cap
            with torch_threads(1 if cast and single else None):
                for off in range(0, rows, piece):
                    part = b[off : off + piece]
                    m = int(part.shape[0])
                    if cast:
                        if convert is None or convert.shape[0] < m:
                            convert = torch.empty((m, dim), dtype=torch.float32)
                        convert[:m].copy_(part)
                        part = convert[:m]
                    if start + off != buf_start + filled or filled + m > rows_cap:
                        flush()
                        buf_start = start + off
                    out = scores[filled : filled + m]
                    if num_probes == 1:
                        torch.mv(part, pt[:, 0], out=out[:, 0])  # matrix-vector: faster than a 1-column mm
                    else:
                        torch.mm(part, pt, out=out)
                    if metric == "cosine" and not normalized:
                        out.div_(part.norm(dim=1, keepdim=True).clamp_min(1e-12))
                    elif metric == "euclidean":
                        sq = (part * part).sum(dim=1, keepdim=True) if not normalized else 1.0
                        out.mul_(2.0).sub_(sq)
                    filled += m
            done += rows
            if progress is not None:
                progress(done, total)
        flush()
    values = best_s.t().numpy().astype(np.float64)
    idx = best_i.t().numpy()
    if metric == "cosine":
        dist = np.maximum(1.0 - values, 0.0)  # rounding can push identical vectors a hair below 0
    else:
        q2 = (probes.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        dist = np.sqrt(np.maximum(q2 - values, 0.0))
    return _sorted(idx, dist)


def _sorted(idx: np.ndarray, dist: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) so that ties are deterministic."""
    out_i = np.empty_like(idx, dtype=np.int64)
    out_d = np.empty(dist.shape, dtype=np.float32)
    for r in range(idx.shape[0]):
        order = np.lexsort((idx[r], dist[r]))
        out_i[r] = idx[r][order]
        out_d[r] = dist[r][order]
    return out_i, out_d


def _rows(gallery: Union[FeatureStore, GalleryIndex], indices: np.ndarray) -> np.ndarray:
    if isinstance(gallery, FeatureStore):
        return gallery.read_features(dtype=np.float32, rows=np.asarray(indices).tolist())
    return gallery.features[torch.from_numpy(np.asarray(indices, dtype=np.int64))].float().numpy()


def _rerank(
    gallery: Union[FeatureStore, GalleryIndex],
    probes: np.ndarray,
    candidates: np.ndarray,
    metric: str,
    top_k: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of each probe's candidate pool; returns the new top_k."""
    from mdpr.evaluation import re_rank

    out_i = np.empty((probes.shape[0], top_k), dtype=np.int64)
    out_d = np.empty((probes.shape[0], top_k), dtype=np.float32)
    for r in range(probes.shape[0]):
        cand = candidates[r]
        gf = _rows(gallery, cand)
        qf = probes[r : r + 1]
        dist = np.asarray(re_rank(qf, gf, metric=metric), dtype=np.float64).reshape(-1)
        order = np.lexsort((cand, dist))[:top_k]
        out_i[r] = cand[order]
        out_d[r] = dist[order]
    return out_i, out_d


def rescore(
    gallery: Union[FeatureStore, GalleryIndex],
    probes: Any,
    candidates: np.ndarray,
    top_k: int,
    metric: str = "cosine",
) -> SearchResult:
    """Exact distances of each probe to its candidate rows, nearest ``top_k`` first (ties: lower row first).

    ``candidates`` is (Q, C) row numbers, -1 for none (a shortlist from an approximate index, or the rows an
    exact scan found). Distances are computed in float64 from the rows as stored, with :func:`search`'s
    definitions, so a row gets the same distance whichever way it was found. Rows with fewer than ``top_k``
    candidates are padded with index -1 and distance inf.
    """
    q = np.asarray(probes, dtype=np.float32).reshape(len(candidates), -1)
    cands = np.asarray(candidates, dtype=np.int64)
    out_i = np.full((q.shape[0], top_k), -1, dtype=np.int64)
    out_d = np.full((q.shape[0], top_k), np.inf, dtype=np.float32)
    width = 0
    for r in range(q.shape[0]):
        cand = np.unique(cands[r][cands[r] >= 0])
        if cand.size == 0:
            continue
        dist = _distances(_rows(gallery, cand).astype(np.float64), q[r].astype(np.float64), metric, gallery.normalized)
        order = np.lexsort((cand, dist))[:top_k]
        out_i[r, : order.size] = cand[order]
        out_d[r, : order.size] = dist[order]
        width = max(width, order.size)
    return SearchResult(out_i[:, :width], out_d[:, :width])


def _distances(rows: np.ndarray, probe: np.ndarray, metric: str, normalized: bool) -> np.ndarray:
    """float64 distances of one probe to (k, D) float64 rows; stored rows of a normalised store count as unit."""
    dots = rows @ probe
    if metric == "cosine":
        dots /= max(float(np.sqrt(probe @ probe)), 1e-12)
        if not normalized:
            dots /= np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)
        return np.maximum(1.0 - dots, 0.0)  # rounding can push identical vectors a hair below 0
    sq = 1.0 if normalized else np.einsum("ij,ij->i", rows, rows)
    return np.sqrt(np.maximum(float(probe @ probe) - 2.0 * dots + sq, 0.0))


def ranked_results(store: FeatureStore, result: SearchResult, resolve: bool = True) -> List[List[Dict[str, Any]]]:
    """Per probe, ``[{"rank", "path", "distance", "pid", "camid"}, ...]`` (pid/camid None when unknown).

    ``resolve=True`` gives absolute paths (joined to the store's root); otherwise paths as stored.
    """
    flat = result.indices.reshape(-1)
    paths = store.paths_at(flat.tolist()) if flat.size else []
    pids = store.pids
    camids = store.camids
    out: List[List[Dict[str, Any]]] = []
    pos = 0
    for r in range(result.indices.shape[0]):
        rows = []
        for rank, (idx, dist) in enumerate(zip(result.indices[r], result.distances[r]), start=1):
            path = paths[pos]
            pos += 1
            pid, camid = int(pids[idx]), int(camids[idx])
            rows.append({
                "rank": rank,
                "path": str(store.resolve(path)) if resolve else path,
                "distance": round(float(dist), 6),
                "pid": pid if pid >= 0 else None,
                "camid": camid if camid >= 0 else None,
            })
        out.append(rows)
    return out


__all__ = ["METRICS", "GalleryIndex", "SearchResult", "ranked_results", "rescore", "search"]
