"""Re-identification metrics (CMC, mAP, mINP) under the field's standard protocol.

For every query, gallery items with the query's person id *and* camera are removed (unless
``cross_camera_only=False``), the remaining "kept" gallery is ranked by ascending distance, ties
broken by gallery index (a stable sort), and

* CMC@k is 1 when the first true match is among the first k kept items,
* AP is the non-interpolated average precision: the mean over positives of precision at each
  positive's rank (``ap="trapezoid"`` gives the Market-1501 devkit's trapezoidal variant),
* INP is ``number of positives / rank of the last positive`` (Ye et al., 2021).

Queries without any kept positive are skipped and counted. Instead of sorting every row, only the
rank of each positive is computed: the number of kept items that come before it, found by sorting
the (usually few) kept items whose distance does not exceed the query's farthest positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mdpr.errors import MdprError

#: Choices of the ``ap`` option.
AP_MODES = ("standard", "trapezoid")

# Bytes of scratch memory per chunk of query rows (a few arrays per candidate gallery item).
_CHUNK_BYTES = 48 * 2**20
# Key packing (row << 56 | distance bits << 24 | gallery index) needs < 256 rows and < 2**24 items.
_MAX_PACKED_ROWS = 255
_MAX_PACKED_GALLERY = 2**24
# Above this fraction of candidate items per chunk, sorting whole rows is faster.
_DENSE_FRACTION = 0.2


@dataclass
class _Pairs:
    """(query, gallery) index pairs grouped by query, gallery index ascending within a query."""

    q: np.ndarray
    g: np.ndarray

    def rows(self, start: int, stop: int) -> slice:
        lo, hi = np.searchsorted(self.q, [start, stop])
        return slice(int(lo), int(hi))


def _as_labels(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MdprError(f"{name} must be a 1-D array of labels, got shape {arr.shape}; pass one label per image.")
    return arr


def _same_identity_pairs(
    q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray, cross_camera_only: bool
) -> tuple[_Pairs, _Pairs]:
    """Positive pairs and removed (same id, same camera) pairs, without any q x g array."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    uniq, starts, counts = np.unique(sorted_pids, return_index=True, return_counts=True)
    loc = np.minimum(np.searchsorted(uniq, q_pids), len(uniq) - 1)
    found = uniq[loc] == q_pids
    count = np.where(found, counts[loc], 0)
    total = int(count.sum())
    pair_q = np.repeat(np.arange(len(q_pids)), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    pair_g = order[np.repeat(starts[loc], count) + offset]
    if cross_camera_only:
        same_cam = g_camids[pair_g] == q_camids[pair_q]
    else:
        same_cam = np.zeros(total, dtype=bool)
    return _Pairs(pair_q[~same_cam], pair_g[~same_cam]), _Pairs(pair_q[same_cam], pair_g[same_cam])


def _monotone_bits(values: np.ndarray) -> np.ndarray:
    """Map float32 values to uint64 whose unsigned order is the float order (-0.0 == +0.0)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    flipped = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return flipped.astype(np.uint64)


def _positive_ranks(
    dist: np.ndarray, pos_r: np.ndarray, pos_g: np.ndarray, rem_r: np.ndarray, rem_g: np.ndarray
) -> np.ndarray:
    """0-based rank of each positive among its row's kept items, ties by gallery index.

    ``dist`` is a contiguous chunk of rows; ``pos_r``/``rem_r`` are row indices within it.
    """
    rows, num_g = dist.shape
    pos_val = dist[pos_r, pos_g]
    # Farthest positive per row: only items at most this far can come before any positive.
    threshold = np.full(rows, np.nan, dtype=dist.dtype)  # NaN: no positive, nothing selected
    if pos_r.size:
        starts = np.flatnonzero(np.r_[True, pos_r[1:] != pos_r[:-1]])
        threshold[pos_r[starts]] = np.maximum.reduceat(pos_val, starts)
    candidate = dist <= threshold[:, None]
    candidate[rem_r, rem_g] = False
    if np.count_nonzero(candidate) > _DENSE_FRACTION * candidate.size:
        # A weak model puts positives far down: sorting whole rows is then cheaper than
        # sorting the candidates one by one.
        del candidate
        return _positive_ranks_sorted_rows(dist, pos_r, pos_g, pos_val, rem_r, rem_g)
    flat = np.flatnonzero(candidate)
    del candidate
    cand_row = flat // num_g
    row_start = np.r_[0, np.cumsum(np.bincount(cand_row, minlength=rows))][:-1]
    if dist.dtype == np.float32 and rows <= _MAX_PACKED_ROWS and num_g < _MAX_PACKED_GALLERY:
        # One uint64 per candidate whose order is (row, distance, gallery index): a plain sort.
        cand_val = dist.reshape(-1)[flat]
        keys = (cand_row.astype(np.uint64) << np.uint64(56)) | (_monotone_bits(cand_val) << np.uint64(24))
        keys |= (flat - cand_row * num_g).astype(np.uint64)
        keys.sort()
        pos_keys = (pos_r.astype(np.uint64) << np.uint64(56)) | (_monotone_bits(pos_val) << np.uint64(24))
        pos_keys |= pos_g.astype(np.uint64)
        position = np.searchsorted(keys, pos_keys)
    else:
        cand_col = flat - cand_row * num_g
        order = np.lexsort((cand_col, dist.reshape(-1)[flat], cand_row))
        sorted_position = np.empty_like(order)
        sorted_position[order] = np.arange(order.size)
        position = sorted_position[np.searchsorted(flat, pos_r * num_g + pos_g)]
    return position - row_start[pos_r]


def _positive_ranks_sorted_rows(
    dist: np.ndarray, pos_r: np.ndarray, pos_g: np.ndarray, pos_val: np.ndarray, rem_r: np.ndarray, rem_g: np.ndarray
) -> np.ndarray:
    """Same result as the candidate path, by sorting the values of whole rows."""
    sorted_rows = np.sort(dist, axis=1)
    smaller = np.empty(pos_r.size, dtype=np.int64)
    not_larger = np.empty(pos_r.size, dtype=np.int64)
    bounds = np.searchsorted(pos_r, np.arange(dist.shape[0] + 1))
    for r in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[r], bounds[r + 1]
        smaller[lo:hi] = np.searchsorted(sorted_rows[r], pos_val[lo:hi], side="left")
        not_larger[lo:hi] = np.searchsorted(sorted_rows[r], pos_val[lo:hi], side="right")
    del sorted_rows
    before = smaller
    for k in np.flatnonzero(not_larger - smaller > 1):  # equal distances: earlier gallery index first
        r, g = pos_r[k], pos_g[k]
        before[k] += np.count_nonzero(dist[r, :g] == pos_val[k])
    if rem_r.size:
        before -= _removed_before(dist, pos_r, pos_g, pos_val, rem_r, rem_g)
    return before


def _removed_before(
    dist: np.ndarray, pos_r: np.ndarray, pos_g: np.ndarray, pos_val: np.ndarray, rem_r: np.ndarray, rem_g: np.ndarray
) -> np.ndarray:
    """For each positive, how many removed items of its row order before it."""
    rows = np.r_[rem_r, pos_r]
    cols = np.r_[rem_g, pos_g]
    vals = np.r_[dist[rem_r, rem_g], pos_val]
    is_removed = np.r_[np.ones(rem_r.size, dtype=np.int64), np.zeros(pos_r.size, dtype=np.int64)]
    order = np.lexsort((cols, vals, rows))
    running = np.cumsum(is_removed[order])
    sorted_rows = rows[order]
    row_first = np.searchsorted(sorted_rows, sorted_rows)  # first sorted position of each entry's row
    removed_so_far = running - is_removed[order] - np.r_[0, running][row_first]
    result = np.empty(order.size, dtype=np.int64)
    result[order] = removed_so_far
    return result[rem_r.size :]


def _ap_inp(
    pos_q: np.ndarray, ranks: np.ndarray, num_q: int, ap_mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: number of positives, first-positive rank, AP and INP (NaN where no positive)."""
    num_pos = np.bincount(pos_q, minlength=num_q)
    first = np.full(num_q, -1, dtype=np.int64)
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    if ranks.size == 0:
        return num_pos, first, ap, inp
    order = np.lexsort((ranks, pos_q))
    q_sorted, r_sorted = pos_q[order], ranks[order].astype(np.float64)
    group_start = np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]])
    group_q = q_sorted[group_start]
    hits = np.arange(q_sorted.size) - np.repeat(group_start, np.diff(np.r_[group_start, q_sorted.size])) + 1.0
    precision = hits / (r_sorted + 1.0)
    if ap_mode == "trapezoid":
        # Market-1501 devkit: area under precision/recall by trapezoids; precision before rank 0 is 1.
        before = np.where(r_sorted > 0, (hits - 1.0) / np.maximum(r_sorted, 1.0), 1.0)
        terms = (before + precision) / 2.0
    else:
        terms = precision
    group_end = np.r_[group_start[1:], q_sorted.size] - 1
    count = num_pos[group_q]
    ap[group_q] = np.add.reduceat(terms, group_start) / count
    inp[group_q] = count / (r_sorted[group_end] + 1.0)
    first[group_q] = r_sorted[group_start].astype(np.int64)
    return num_pos, first, ap, inp


def _rows_per_chunk(num_q: int, num_g: int, chunk_bytes: int) -> int:
    # Worst case every item of a row is a candidate: ~40 bytes of index/key arrays per item.
    return int(max(1, min(num_q, _MAX_PACKED_ROWS, chunk_bytes // max(1, 41 * num_g))))


def _chunk(distmat: Any, start: int, stop: int) -> np.ndarray:
    block = np.asarray(distmat[start:stop])
    if block.dtype == np.float16:
        block = block.astype(np.float32)  # exact
    elif block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64)
    block = np.ascontiguousarray(block)
    if np.isnan(block).any():
        raise MdprError(
            f"the distance matrix has NaN values in query rows {start}-{stop - 1}; check the features for NaN/inf."
        )
    return block


def _cuhk03_cmc(
    block: np.ndarray,
    rows: range,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    valid: np.ndarray,
    cross_camera_only: bool,
    repeats: int,
    rng: np.random.RandomState,
    counts: np.ndarray,
) -> None:
    """Single-gallery-shot CMC: per repeat, one random image per gallery identity (CUHK03 classic).

    The random draws follow torchreid/fast-reid's loop exactly (identities in order of first
    appearance in the ranked list, one ``randint`` each), so a seed reproduces their numbers.
    """
    for local, qi in enumerate(rows):
        if not valid[qi]:
            continue
        order = np.argsort(block[local], kind="stable")
        if cross_camera_only:
            order = order[~((g_pids[order] == q_pids[qi]) & (g_camids[order] == q_camids[qi]))]
        ranked_pids = g_pids[order]
        uniq, first_pos, inverse = np.unique(ranked_pids, return_index=True, return_inverse=True)
        group_order = np.argsort(first_pos, kind="stable")  # identities by first appearance
        group_of_item = np.argsort(group_order)[inverse.reshape(-1)]
        sizes = np.bincount(group_of_item, minlength=uniq.size)
        # Ranked positions of each identity's items, grouped identity by identity.
        members = np.argsort(group_of_item, kind="stable")
        member_start = np.r_[0, np.cumsum(sizes)[:-1]]
        query_group = int(group_of_item[np.flatnonzero(ranked_pids == q_pids[qi])[0]])
        draws = rng.randint(0, np.tile(sizes, repeats)).reshape(repeats, uniq.size)
        chosen = members[member_start[None, :] + draws]
        rank = (chosen < chosen[:, query_group : query_group + 1]).sum(axis=1)
        counts += np.bincount(rank, minlength=counts.size)[: counts.size] / repeats


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    cross_camera_only: bool = True,
    ap: str = "standard",
    cuhk03_classic: bool = False,
    repeats: int = 10,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    chunk_bytes: int = _CHUNK_BYTES,
) -> dict[str, Any]:
    """CMC, mAP and mINP of a (num_query, num_gallery) distance matrix (smaller = more similar).

    Args:
        distmat: array-like (numpy, torch CPU tensor, memmap, HDF5 dataset) of distances.
        q_pids, g_pids, q_camids, g_camids: one label per query / gallery item.
        max_rank: length of the CMC curve (capped at the gallery size).
        cross_camera_only: remove gallery items with the query's id and camera (the standard
            protocol); ``False`` keeps them, for single-camera data.
        ap: ``"standard"`` (non-interpolated, as torchreid/fast-reid) or ``"trapezoid"``
            (Market-1501 devkit).
        cuhk03_classic: CMC with CUHK03's single-gallery-shot sampling, averaged over ``repeats``
            draws from ``numpy.random.RandomState(seed)``; AP and INP use the whole kept list.
        progress: called as ``progress(done_queries, num_queries)`` after each chunk.

    Returns:
        dict with ``cmc`` (fractions, rank 1 first), ``mAP``, ``mINP``, ``num_queries``,
        ``num_valid`` (queries with at least one kept positive), ``num_skipped``, ``valid``
        (boolean mask over queries), ``all_AP`` and ``all_INP`` (per valid query, query order)
        and ``protocol`` (a dict of the settings used). Means are NaN when no query is valid.
    """
    if ap not in AP_MODES:
        raise MdprError(f"unknown AP variant {ap!r}; choose one of {', '.join(AP_MODES)}.")
    shape = tuple(getattr(distmat, "shape", np.shape(distmat)))
    if len(shape) != 2:
        raise MdprError(f"the distance matrix must be 2-D (queries x gallery), got shape {shape}.")
    num_q, num_g = (int(s) for s in shape)
    if num_q == 0 or num_g == 0:
        raise MdprError(
            f"cannot evaluate with {num_q} queries and {num_g} gallery items; both sets need at least one image."
        )
    labels = {"q_pids": q_pids, "q_camids": q_camids, "g_pids": g_pids, "g_camids": g_camids}
    arrays = {name: _as_labels(value, name) for name, value in labels.items()}
    for name, arr in arrays.items():
        expected = num_q if name.startswith("q") else num_g
        if arr.shape[0] != expected:
            side = "query" if name.startswith("q") else "gallery"
            raise MdprError(
                f"{name} has {arr.shape[0]} entries but the distance matrix has {expected} {side} items; "
                "pass one label per row/column."
            )
    if max_rank < 1:
        raise MdprError(f"max_rank must be at least 1, got {max_rank}.")
    qp, qc, gp, gc = arrays["q_pids"], arrays["q_camids"], arrays["g_pids"], arrays["g_camids"]
    if hasattr(distmat, "detach"):  # torch tensor
        distmat = distmat.detach().cpu().numpy()

    positives, removed = _same_identity_pairs(qp, gp, qc, gc, cross_camera_only)
    valid = np.bincount(positives.q, minlength=num_q) > 0
    num_ranks = min(max_rank, num_g)
    ranks = np.empty(positives.q.size, dtype=np.int64)
    cuhk03_counts = np.zeros(num_ranks)
    rng = np.random.RandomState(seed) if cuhk03_classic else None
    step = _rows_per_chunk(num_q, num_g, chunk_bytes)
    for start in range(0, num_q, step):
        stop = min(num_q, start + step)
        block = _chunk(distmat, start, stop)
        p, r = positives.rows(start, stop), removed.rows(start, stop)
        ranks[p] = _positive_ranks(block, positives.q[p] - start, positives.g[p], removed.q[r] - start, removed.g[r])
        if rng is not None:
            _cuhk03_cmc(
                block, range(start, stop), qp, qc, gp, gc, valid, cross_camera_only, repeats, rng, cuhk03_counts
            )
        if progress is not None:
            progress(stop, num_q)

    _, first, all_ap, all_inp = _ap_inp(positives.q, ranks, num_q, ap)
    num_valid = int(valid.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        if rng is not None:
            cmc = np.cumsum(cuhk03_counts) / num_valid
        else:
            hits_at = np.bincount(first[valid], minlength=num_g)[:num_ranks]
            cmc = np.cumsum(hits_at) / num_valid
    all_ap, all_inp = all_ap[valid], all_inp[valid]
    return {
        "cmc": cmc,
        "mAP": float(all_ap.mean()) if num_valid else float("nan"),
        "mINP": float(all_inp.mean()) if num_valid else float("nan"),
        "num_queries": num_q,
        "num_valid": num_valid,
        "num_skipped": num_q - num_valid,
        "valid": valid,
        "all_AP": all_ap,
        "all_INP": all_inp,
        "protocol": {
            "cross_camera_only": cross_camera_only,
            "ap": ap,
            "cuhk03_classic": cuhk03_classic,
            "repeats": repeats if cuhk03_classic else None,
            "seed": seed if cuhk03_classic else None,
            "max_rank": num_ranks,
            "ties": "gallery index",
        },
    }
