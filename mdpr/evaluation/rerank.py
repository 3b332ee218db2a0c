"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without any N x N matrix.

Both methods compute, for all N = num_query + num_gallery images, the exact k nearest
neighbours (symmetric blocks of the distance matrix, each computed once and reduced to a running
top-k), the k-reciprocal expansion sets and their weights as *sparse* rows of V, the local query
expansion of V over the k2 nearest neighbours, and the Jaccard distance between query and gallery
rows of V through an inverted index (column -> gallery rows). Memory is O(N * k * k2) plus the
(num_query, num_gallery) output and one block of the distance matrix.

``method="jaccard"`` follows fast-reid's ``compute_jaccard_distance`` (what the official MDPR
evaluator runs): k1 neighbours including the image itself, weights ``softmax(-d^2)`` over each
expansion set, Jaccard clamped at 0, mixed as ``(1 - lambda) * jaccard + lambda * base`` where the
base is the cosine distance (``metric="cosine"``) or the squared Euclidean distance of the raw
features (``metric="euclidean"``).

``method="zhong"`` is the classic ``re_ranking(q_g, q_q, g_g)`` of the original authors and
torchreid, applied to Euclidean distances (of L2-normalised features when ``metric="cosine"``):
squared distances divided by each row's maximum, k1 + 1 neighbours, weights ``exp(-d)``
normalised to sum 1, the same normalised distances as the base.

Neighbour lists break distance ties by image index (query images first, then gallery images).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mdpr.errors import MdprError
from mdpr.evaluation.distance import as_features, check_same_dim
from mdpr.runtime import l2_normalize

#: Re-ranking methods accepted by :func:`re_rank`.
METHODS = ("jaccard", "zhong")

#: ``progress(stage, done, total)``; stages are "neighbours", "encoding" and "jaccard".
Progress = Callable[[str, int, int], None]

_BLOCK_ROWS = 2048  # rows of one distance block (a 2048 x 2048 float32 block is 16 MiB)
_EXTRA_NEIGHBOURS = 4  # kept beyond k so that ties at the k-th place are detected
_PAIRS_PER_CHUNK = 2_000_000  # (query, gallery) contributions accumulated at once
_DOT_ROWS = 4096  # feature pairs gathered at once when a distance is not in the neighbour lists


@dataclass
class _Neighbours:
    index: np.ndarray  # (N, K) int64, nearest first, ties by index
    dist: np.ndarray  # (N, K) float32 squared Euclidean distances
    row_max: np.ndarray  # (N,) largest squared distance of each row (all N columns)


@dataclass
class _Sparse:
    """Rows of a sparse N x N matrix: row ``i`` holds ``cols[ptr[i]:ptr[i+1]]`` (ascending)."""

    ptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray

    @classmethod
    def from_codes(cls, codes: np.ndarray, vals: np.ndarray, n: int) -> _Sparse:
        """From sorted unique ``row * n + col`` codes."""
        rows = codes // n
        ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
        return cls(ptr, codes - rows * n, vals)

    def row_of_entries(self) -> np.ndarray:
        return np.repeat(np.arange(self.ptr.size - 1), np.diff(self.ptr))


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` for integer codes by one sort (faster than numpy's hash path here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if values.size else values


def _expand_segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l) pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


class _BlockDistances:
    """Squared Euclidean distances of row blocks, computed identically whenever asked again."""

    def __init__(self, features: Any, block_rows: int) -> None:
        import torch

        self.x = features
        self.sq = (features * features).sum(1)
        self.n = features.shape[0]
        self.bounds = list(range(0, self.n, block_rows)) + [self.n]
        self.buffer = torch.empty(block_rows * block_rows, dtype=torch.float32)

    def block(self, a: int, b: int, c: int, e: int) -> Any:
        import torch

        out = self.buffer[: (b - a) * (e - c)].view(b - a, e - c)
        # |x|^2 + |y|^2 - 2 x.y, with the |y|^2 row folded into the product (one pass fewer)
        torch.addmm(self.sq[c:e].expand(b - a, e - c), self.x[a:b], self.x[c:e].T, beta=1.0, alpha=-2.0, out=out)
        return out.add_(self.sq[a:b][:, None])

    def full_rows(self, rows: np.ndarray, block_index: int) -> np.ndarray:
        """Whole rows (all N columns) for rows inside one row block, from the same block products."""
        a, b = self.bounds[block_index], self.bounds[block_index + 1]
        local = rows - a
        parts = []
        for j in range(len(self.bounds) - 1):
            c, e = self.bounds[j], self.bounds[j + 1]
            if j >= block_index:
                parts.append(self.block(a, b, c, e)[local].numpy().copy())
            else:
                parts.append(self.block(c, e, a, b)[:, local].T.numpy().copy())
        return np.concatenate(parts, axis=1)


class _RunningTopK:
    """The ``keep`` smallest (distance, index) offers seen so far for every row (unordered)."""

    def __init__(self, n: int, keep: int) -> None:
        self.keep = keep
        self.values = np.full((n, keep), np.inf, dtype=np.float32)
        self.index = np.full((n, keep), -1, dtype=np.int64)
        self.bound = np.full(n, np.inf, dtype=np.float32)  # largest kept value of each row

    def offer(self, rows: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        """Merge candidate neighbours (``rows[m]`` gets ``index[m]`` at ``values[m]``)."""
        if rows.size == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows, index, values = rows[order], index[order], values[order]
        targets, starts, counts = np.unique(rows, return_index=True, return_counts=True)
        slot = np.arange(rows.size) - np.repeat(starts, counts)
        owner = np.repeat(np.arange(targets.size), counts)
        width = self.keep + int(counts.max())
        cand_val = np.full((targets.size, width), np.inf, dtype=np.float32)
        cand_idx = np.full((targets.size, width), -1, dtype=np.int64)
        cand_val[:, : self.keep], cand_idx[:, : self.keep] = self.values[targets], self.index[targets]
        cand_val[owner, self.keep + slot], cand_idx[owner, self.keep + slot] = values, index
        pick = np.argpartition(cand_val, self.keep - 1, axis=1)[:, : self.keep]
        self.values[targets] = np.take_along_axis(cand_val, pick, 1)
        self.index[targets] = np.take_along_axis(cand_idx, pick, 1)
        self.bound[targets] = self.values[targets].max(1)

    def offer_block(self, dist: np.ndarray, row0: int, col0: int, transposed: bool) -> None:
        """Offer a block: ``dist[r, c]`` is the distance between ``row0 + r`` and ``col0 + c``.

        With ``transposed`` the block feeds the rows ``col0 + c`` instead. Once a row holds
        ``keep`` offers only values below its current bound can enter, usually a handful per block,
        so a comparison pass replaces a full selection.
        """
        width = dist.shape[1]
        targets = slice(col0, col0 + width) if transposed else slice(row0, row0 + dist.shape[0])
        bound = self.bound[targets]
        if np.isinf(bound).any():  # rows still filling up: take each one's smallest keep values
            import torch

            axis = 0 if transposed else 1
            take = min(self.keep, dist.shape[axis])
            top = torch.topk(torch.from_numpy(dist), take, dim=axis, largest=False, sorted=False)
            values, pick = top.values.numpy(), top.indices.numpy()
            if transposed:
                rows = np.broadcast_to(np.arange(col0, col0 + width)[None, :], pick.shape)
                index = pick + row0
            else:
                rows = np.broadcast_to(np.arange(row0, row0 + dist.shape[0])[:, None], pick.shape)
                index = pick + col0
            self.offer(rows.ravel(), index.ravel(), values.ravel())
            return
        flat = np.flatnonzero(dist < (bound[None, :] if transposed else bound[:, None]))
        r = flat // width
        c = flat - r * width
        if transposed:
            self.offer(col0 + c, row0 + r, dist.reshape(-1)[flat])
        else:
            self.offer(row0 + r, col0 + c, dist.reshape(-1)[flat])


def _nearest_neighbours(
    features: np.ndarray,
    k: int,
    *,
    sink: Optional[Callable[[int, int, int, int, np.ndarray], None]] = None,
    row_max: bool = False,
    block_rows: int = _BLOCK_ROWS,
    progress: Optional[Progress] = None,
) -> _Neighbours:
    """Exact k nearest neighbours of every row (itself included) by squared Euclidean distance.

    Each block (I, J >= I) of the distance matrix is computed once and feeds the running top-k of
    rows I and, transposed, of rows J. ``sink(a, b, c, e, block)`` sees every block, e.g. to copy
    query x gallery distances into an output. ``row_max`` also tracks each row's largest distance
    (NaN otherwise).
    """
    import torch

    n = features.shape[0]
    k = min(k, n)
    keep = min(n, k + _EXTRA_NEIGHBOURS)
    blocks = _BlockDistances(torch.from_numpy(features), block_rows)
    best = _RunningTopK(n, keep)
    largest = np.full(n, -np.inf if row_max else np.nan, dtype=np.float32)
    num_blocks = len(blocks.bounds) - 1
    total = num_blocks * (num_blocks + 1) // 2
    done = 0
    for i in range(num_blocks):
        a, b = blocks.bounds[i], blocks.bounds[i + 1]
        for j in range(i, num_blocks):
            c, e = blocks.bounds[j], blocks.bounds[j + 1]
            dist = blocks.block(a, b, c, e).numpy()
            if sink is not None:
                sink(a, b, c, e, dist)
            best.offer_block(dist, a, c, transposed=False)
            if row_max:
                np.maximum(largest[a:b], dist.max(1), out=largest[a:b])
            if j != i:
                best.offer_block(dist, a, c, transposed=True)
                if row_max:
                    np.maximum(largest[c:e], dist.max(0), out=largest[c:e])
            done += 1
            if progress is not None:
                progress("neighbours", done, total)
    order = np.lexsort((best.index, best.values), axis=1)  # nearest first, ties by index
    values = np.take_along_axis(best.values, order, 1)
    index = np.take_along_axis(best.index, order, 1)
    if keep > k:
        # Rows whose k-th and last kept distances are equal may have dropped a tied neighbour with
        # a smaller index: recompute them exactly (only duplicated features do this).
        tied = np.flatnonzero(values[:, k - 1] == values[:, keep - 1])
        block_of_row = np.searchsorted(blocks.bounds, tied, side="right") - 1
        for block_index in np.unique(block_of_row):
            rows = tied[block_of_row == block_index]
            for s in range(0, rows.size, 256):
                batch = rows[s : s + 256]
                full = blocks.full_rows(batch, int(block_index))
                exact = np.argsort(full, axis=1, kind="stable")[:, :keep]
                values[batch], index[batch] = np.take_along_axis(full, exact, 1), exact
    index, values = index[:, :k], values[:, :k]
    return _Neighbours(index=index, dist=values, row_max=largest)


def _reciprocal(index: np.ndarray, k: int) -> _Sparse:
    """k-reciprocal neighbours R(i, k) = {j in top_k(i) : i in top_k(j)}, in neighbour order."""
    n = index.shape[0]
    forward = index[:, :k]
    codes = np.sort((np.arange(n)[:, None] * n + forward).ravel())
    backward = (forward * n + np.arange(n)[:, None]).ravel()
    found = np.minimum(np.searchsorted(codes, backward), codes.size - 1)
    mutual = (codes[found] == backward).reshape(forward.shape)
    ptr = np.r_[0, np.cumsum(mutual.sum(1))]
    return _Sparse(ptr, forward[mutual], np.zeros(0))


def _expansion_codes(full: _Sparse, half: _Sparse, n: int) -> np.ndarray:
    """Sorted unique ``i * n + j`` for j in the k-reciprocal expansion set of i."""
    pair_row = full.row_of_entries()
    candidate = full.cols
    half_len = np.diff(half.ptr)[candidate]
    members = half.cols[_expand_segments(half.ptr[candidate], half_len)]
    member_pair = np.repeat(np.arange(candidate.size), half_len)
    # |R_half(c) & R(i)|: look the codes i * n + member up among R(i)'s codes.
    own = pair_row * n + candidate
    own_sorted = np.sort(own)
    probe = pair_row[member_pair] * n + members
    found = np.minimum(np.searchsorted(own_sorted, probe), max(own_sorted.size - 1, 0))
    shared = np.bincount(member_pair, weights=own_sorted[found] == probe, minlength=candidate.size)
    accepted = shared > 2.0 / 3.0 * half_len
    take = accepted[member_pair]
    return _sorted_unique(np.r_[own, pair_row[member_pair][take] * n + members[take]])


def _squared_distances(
    features: np.ndarray, sq: np.ndarray, rows: np.ndarray, cols: np.ndarray, nb: _Neighbours
) -> np.ndarray:
    """d^2(rows[m], cols[m]): from the neighbour lists when there, else by a dot product."""
    n, k = nb.index.shape
    known = (np.arange(n)[:, None] * n + nb.index).ravel()
    order = np.argsort(known, kind="stable")
    known_sorted = known[order]
    wanted = rows * n + cols
    where = np.minimum(np.searchsorted(known_sorted, wanted), known_sorted.size - 1)
    hit = known_sorted[where] == wanted
    out = np.empty(rows.size, dtype=np.float64)
    out[hit] = nb.dist.ravel()[order[where[hit]]]
    missing = np.flatnonzero(~hit)
    for s in range(0, missing.size, _DOT_ROWS):
        m = missing[s : s + _DOT_ROWS]
        dots = np.einsum("ij,ij->i", features[rows[m]], features[cols[m]])
        out[m] = sq[rows[m]] + sq[cols[m]] - 2.0 * dots
    return out


def _encode(nb: _Neighbours, features: np.ndarray, k1: int, k2: int, method: str) -> _Sparse:
    """Sparse V (k-reciprocal encoding) with the k2 local query expansion applied."""
    n = features.shape[0]
    k_full = min(k1 if method == "jaccard" else k1 + 1, n)
    k_half = min(int(np.around(k1 / 2.0)) + 1, nb.index.shape[1])
    codes = _expansion_codes(_reciprocal(nb.index, k_full), _reciprocal(nb.index, k_half), n)
    rows = codes // n
    cols = codes - rows * n
    sq = np.einsum("ij,ij->i", features, features, dtype=np.float32).astype(np.float64)
    dist = _squared_distances(features, sq, rows, cols, nb)
    ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
    nonempty = np.flatnonzero(np.diff(ptr))
    starts = ptr[nonempty]
    if method == "jaccard":
        # softmax(-d^2) over the expansion set, shifted by the row minimum for stability
        shift = np.zeros(n)
        shift[nonempty] = np.minimum.reduceat(dist, starts)
        weight = np.exp(-(dist - shift[rows]))
    else:
        weight = np.exp(-dist / nb.row_max.astype(np.float64)[rows])
    total = np.zeros(n)
    total[nonempty] = np.add.reduceat(weight, starts)
    v = _Sparse(ptr, cols, weight / total[rows])

    k2 = min(k2, nb.index.shape[1])
    if k2 == 1:  # both references skip the expansion then (V itself, not V of the 1st neighbour)
        return v
    # V_qe[i] = mean of V over i's k2 nearest neighbours, summed as sparse rows in chunks.
    pieces_codes, pieces_vals = [], []
    step = max(1, _PAIRS_PER_CHUNK // max(1, k2 * int(np.diff(ptr).max(initial=1))))
    for s in range(0, n, step):
        src = nb.index[s : s + step, :k2]
        lengths = np.diff(v.ptr)[src].ravel()
        entry = _expand_segments(v.ptr[src].ravel(), lengths)
        owner = np.repeat(np.repeat(np.arange(s, s + src.shape[0]), k2), lengths)
        c = owner * n + v.cols[entry]
        order = np.argsort(c, kind="stable")
        c = c[order]
        first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.zeros(0, dtype=np.int64)
        pieces_codes.append(c[first])
        pieces_vals.append(np.add.reduceat(v.vals[entry][order], first) / k2 if c.size else np.zeros(0))
    return _Sparse.from_codes(np.concatenate(pieces_codes), np.concatenate(pieces_vals), n)


def _jaccard_rows(
    v: _Sparse, num_query: int, finish: Callable[[int, int, np.ndarray], None], progress: Optional[Progress] = None
) -> None:
    """Jaccard distance between query rows and gallery rows of V, through an inverted index.

    ``sum_k min(V[i,k], V[j,k])`` only involves columns k where both rows are non-zero, so each
    query entry (i, k, v) meets just the gallery rows listed under column k.
    """
    n = v.ptr.size - 1
    num_gallery = n - num_query
    g_start = v.ptr[num_query]
    g_rows = v.row_of_entries()[g_start:] - num_query
    g_cols, g_vals = v.cols[g_start:], v.vals[g_start:]
    by_col = np.argsort(g_cols, kind="stable")
    inv_ptr = np.r_[0, np.cumsum(np.bincount(g_cols, minlength=n))]
    inv_rows, inv_vals = g_rows[by_col], g_vals[by_col]
    inv_len = np.diff(inv_ptr)

    # Contributions per query row, to cut the queries into chunks of bounded work and memory.
    q_entries = np.arange(v.ptr[num_query])
    q_rows = v.row_of_entries()[: v.ptr[num_query]]
    per_query = np.bincount(q_rows, weights=inv_len[v.cols[q_entries]], minlength=num_query)
    max_rows = max(1, _PAIRS_PER_CHUNK // max(1, num_gallery))
    start = 0
    while start < num_query:
        stop = start + 1
        budget = per_query[start]
        while stop < num_query and stop - start < max_rows and budget + per_query[stop] <= _PAIRS_PER_CHUNK:
            budget += per_query[stop]
            stop += 1
        lo, hi = v.ptr[start], v.ptr[stop]
        cols, vals = v.cols[lo:hi], v.vals[lo:hi]
        local_row = q_rows[lo:hi] - start
        lengths = inv_len[cols]
        entry = _expand_segments(inv_ptr[cols], lengths)
        owner = np.repeat(np.arange(lo, hi) - lo, lengths)
        target = np.repeat(local_row, lengths) * num_gallery + inv_rows[entry]
        overlap = np.minimum(vals[owner], inv_vals[entry])
        shared = np.bincount(target, weights=overlap, minlength=(stop - start) * num_gallery)
        shared = shared.reshape(stop - start, num_gallery)
        finish(start, stop, 1.0 - shared / (2.0 - shared))
        if progress is not None:
            progress("jaccard", stop, num_query)
        start = stop


def estimate_re_rank(num_query: int, num_gallery: int, dim: int, *, calibrate: bool = True) -> dict[str, float]:
    """Rough time (seconds) and peak extra memory (bytes) of :func:`re_rank` on this machine.

    The time scales a short timed matrix product to the N x N x dim work of the neighbour
    search (half of it thanks to symmetry) plus the encoding and Jaccard stages.
    """
    n = num_query + num_gallery
    flops_per_s = 1.0e11
    if calibrate:
        import torch

        a, b = torch.randn(512, dim), torch.randn(dim, 1024)
        torch.mm(a, b)  # warm-up
        t0 = time.perf_counter()
        torch.mm(a, b)
        flops_per_s = 2.0 * 512 * 1024 * dim / max(time.perf_counter() - t0, 1e-6)
    matmul = (n * n / 2.0 + n * _BLOCK_ROWS / 2.0) * dim * 2.0 / flops_per_s
    seconds = 1.35 * matmul + 2.5e-4 * n  # block reductions, then encoding and Jaccard per image
    memory = (
        n * dim * 4.0  # the features, normalised copy
        + num_query * num_gallery * 4.0  # the output
        + 3 * _BLOCK_ROWS * _BLOCK_ROWS * 4.0  # one distance block and its reductions
        + n * 600.0 * 12.0  # sparse V and its expansion (~600 entries per image at most)
        + _PAIRS_PER_CHUNK * 48.0  # one Jaccard chunk
    )
    return {"seconds": seconds, "bytes": memory, "images": float(n)}


def re_rank(
    qf: Any,
    gf: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    method: str = "jaccard",
    metric: str = "cosine",
    *,
    progress: Optional[Progress] = None,
) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) float32 distances by k-reciprocal encoding.

    Args:
        qf, gf: query and gallery features (numpy arrays or torch tensors), one row per image.
        k1, k2, lambda_value: the k-reciprocal parameters (paper defaults 20, 6, 0.3).
        method: ``"jaccard"`` (fast-reid / official MDPR evaluator) or ``"zhong"`` (classic).
        metric: ``"cosine"`` L2-normalises the features first; ``"euclidean"`` uses them raw.
        progress: optional ``progress(stage, done, total)`` callback.
    """

    if method not in METHODS:
        raise MdprError(f"unknown re-ranking method {method!r}; choose one of {', '.join(METHODS)}.")
    if metric not in ("cosine", "euclidean"):
        raise MdprError(f"re-ranking supports the metrics cosine and euclidean, not {metric!r}.")
    if k1 < 1 or k2 < 1:
        raise MdprError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}.")
    if not 0.0 <= lambda_value <= 1.0:
        raise MdprError(f"lambda_value must lie in [0, 1], got {lambda_value}.")
    q = as_features(qf, "query features")
    g = as_features(gf, "gallery features")
    check_same_dim(q, g)
    num_query, num_gallery = q.shape[0], g.shape[0]
    features = np.concatenate([q, g])
    del q, g
    if metric == "cosine":
        l2_normalize(features, inplace=True)  # our own concatenated copy
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    cosine_base = method == "jaccard" and metric == "cosine"

    def keep_base(a: int, b: int, c: int, e: int, dist: np.ndarray) -> None:
        # Query x gallery distances are the base term; with queries first they all lie in
        # blocks above the diagonal, so each is seen exactly once.
        rows = slice(a, min(b, num_query))
        cols = slice(max(c, num_query), e)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        part = dist[: rows.stop - a, cols.start - c :]
        # 1 - cos(x, y) = |x - y|^2 / 2 for unit vectors
        target = out[rows, cols.start - num_query : cols.stop - num_query]
        if cosine_base:
            np.multiply(part, np.float32(0.5), out=target)
        else:
            target[...] = part

    k_search = k1 if method == "jaccard" else max(k1 + 1, k2)
    nb = _nearest_neighbours(features, k_search, sink=keep_base, row_max=method == "zhong", progress=progress)
    if progress is not None:
        progress("encoding", 0, 1)
    v = _encode(nb, features, k1, k2, method)
    if progress is not None:
        progress("encoding", 1, 1)
    q_row_max = nb.row_max[:num_query].astype(np.float64)

    def finish(start: int, stop: int, jaccard: np.ndarray) -> None:
        base = out[start:stop].astype(np.float64)
        if method == "jaccard":
            np.maximum(jaccard, 0.0, out=jaccard)
        else:
            base /= q_row_max[start:stop, None]
        np.maximum(base, 0.0, out=base)
        out[start:stop] = (1.0 - lambda_value) * jaccard + lambda_value * base

    _jaccard_rows(v, num_query, finish, progress)
    return out
