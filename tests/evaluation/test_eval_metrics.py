"""CMC / mAP / mINP agree exactly with a direct transcription of the protocol."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from mdpr.errors import MdprError
from mdpr.evaluation import evaluate
from mdpr.evaluation import metrics as metrics_module


def reference(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank=50,
    cross_camera_only=True,
    ap="standard",
    cuhk03_classic=False,
    repeats=10,
    seed=0,
):
    """One query at a time: rank the kept gallery with a stable sort, read the metrics off the list."""
    num_g = distmat.shape[1]
    num_ranks = min(max_rank, num_g)
    rng = np.random.RandomState(seed)
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        if cross_camera_only:
            kept = [j for j in range(num_g) if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        else:
            kept = list(range(num_g))
        kept = sorted(kept, key=lambda j: (distmat[i, j], j))  # ties: smaller gallery index first
        match = [g_pids[j] == q_pids[i] for j in kept]
        if not any(match):
            continue
        positions = [r for r, m in enumerate(match) if m]
        cmc = np.zeros(num_ranks)
        if cuhk03_classic:
            groups = OrderedDict()
            for r, j in enumerate(kept):
                groups.setdefault(g_pids[j], []).append(r)
            for _ in range(repeats):
                chosen = sorted(rng.choice(members) for members in groups.values())
                first = [match[r] for r in chosen].index(True)
                cmc[first:] += 1.0 / repeats
        else:
            cmc[positions[0] :] = 1.0
        cmcs.append(cmc)
        if ap == "standard":
            aps.append(sum((m + 1) / (r + 1) for m, r in enumerate(positions)) / len(positions))
        else:  # the Market-1501 devkit's loop
            old_recall, old_precision, area, hits = 0.0, 1.0, 0.0, 0
            for r, m in enumerate(match):
                hits += m
                recall, precision = hits / len(positions), hits / (r + 1)
                area += (recall - old_recall) * (old_precision + precision) / 2
                old_recall, old_precision = recall, precision
                if hits == len(positions):
                    break
            aps.append(area)
        inps.append(len(positions) / (positions[-1] + 1))
    if not cmcs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.mean(cmcs, axis=0), np.array(aps), np.array(inps)


def _random_case(rng, float_ties):
    num_q, num_g = int(rng.integers(1, 25)), int(rng.integers(1, 90))
    num_ids, num_cams = int(rng.integers(1, 9)), int(rng.integers(1, 4))
    q_pids, g_pids = rng.integers(1, num_ids + 1, num_q), rng.integers(0, num_ids + 1, num_g)  # 0: distractors
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if float_ties:
        dist = rng.integers(0, 5, (num_q, num_g)).astype(np.float32) / 4
    else:
        dist = rng.random((num_q, num_g))
    return dist, q_pids, g_pids, q_cams, g_cams


def _check(ours, ref):
    cmc, aps, inps = ref
    assert ours["num_valid"] == len(aps)
    np.testing.assert_allclose(ours["cmc"], cmc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["all_AP"], aps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["all_INP"], inps, rtol=0, atol=1e-9)
    assert abs(ours["mAP"] - aps.mean()) < 1e-9 and abs(ours["mINP"] - inps.mean()) < 1e-9


# "sparse": the candidate sort; "rows": whole-row sorts (what weak models trigger); both exact.
@pytest.mark.parametrize("path", ["sparse", "rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_cases_match_reference(path, dtype, monkeypatch):
    monkeypatch.setattr(metrics_module, "_DENSE_FRACTION", 2.0 if path == "sparse" else -1.0)
    rng = np.random.default_rng(0 if dtype == np.float32 else 1)
    checked = 0
    for case in range(150):
        dist, qp, gp, qc, gc = _random_case(rng, float_ties=case % 2 == 0)
        dist = dist.astype(dtype)
        ref = reference(dist, qp, gp, qc, gc)
        if len(ref[1]) == 0:
            continue
        ours = evaluate(dist, qp, gp, qc, gc, chunk_bytes=int(rng.integers(1, 20_000)))
        _check(ours, ref)
        checked += 1
    assert checked > 80


@pytest.mark.parametrize(
    "options",
    [
        {"ap": "trapezoid"},
        {"cross_camera_only": False},
        {"max_rank": 3},
        {"cuhk03_classic": True, "seed": 3},
        {"cuhk03_classic": True, "seed": 11, "repeats": 4, "ap": "trapezoid"},
    ],
)
def test_protocol_options_match_reference(options):
    rng = np.random.default_rng(5)
    for case in range(60):
        dist, qp, gp, qc, gc = _random_case(rng, float_ties=case % 3 == 0)
        ref = reference(dist, qp, gp, qc, gc, **options)
        if len(ref[1]) == 0:
            continue
        _check(evaluate(dist, qp, gp, qc, gc, **options), ref)


def test_market_sized_chunks_and_packing_paths_agree():
    rng = np.random.default_rng(2)
    num_q, num_g = 300, 700
    qp, gp = rng.integers(1, 60, num_q), rng.integers(0, 60, num_g)
    qc, gc = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    # positives a bit closer than negatives, like a trained model
    dist = rng.random((num_q, num_g)).astype(np.float32) + 0.7 * (qp[:, None] != gp[None, :])
    dist[:, ::7] = dist[:, 1::7][:, : dist[:, ::7].shape[1]]  # exact ties between columns
    ref = reference(dist, qp, gp, qc, gc)
    _check(evaluate(dist, qp, gp, qc, gc), ref)
    _check(evaluate(dist.astype(np.float64), qp, gp, qc, gc), ref)
    _check(
        evaluate(dist.astype(np.float16).astype(np.float32), qp, gp, qc, gc),
        reference(dist.astype(np.float16).astype(np.float32), qp, gp, qc, gc),
    )


def test_hand_computed_example():
    # gallery: idx 0 (id 1, cam 0, same camera as the query: removed), 1 (id 2), 2 (id 1), 3 (id 1)
    dist = np.array([[0.0, 0.1, 0.2, 0.2]])
    out = evaluate(dist, [1], [1, 2, 1, 1], [0], [0, 1, 1, 2])
    # kept ranking: 1 (neg), 2 (pos), 3 (pos; tie with 2, larger index)
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0, 1.0])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
    assert out["mINP"] == pytest.approx(2 / 3, abs=1e-12)


def test_short_kept_lists_keep_cmc_monotone():
    # 4 gallery items, 2 removed (same id and camera): the kept list has 2 items and its only
    # positive is second, so CMC is 0, 1, 1, 1 (the peers leave stale or missing values past 2)
    dist = np.array([[0.0, 0.0, 0.5, 0.1]])
    out = evaluate(dist, [1], [1, 1, 1, 3], [0], [0, 0, 1, 1])
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0, 1.0])
    assert out["cmc"].shape == (4,)  # capped at the gallery size, not at the kept list
    out = evaluate(np.r_[dist, dist], [1, 7], [1, 1, 1, 3], [0, 0], [0, 0, 1, 1], max_rank=2)
    assert out["num_valid"] == 1 and out["num_skipped"] == 1  # query id 7 is not in the gallery
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0])


def test_queries_without_positives_are_skipped_not_fatal():
    out = evaluate(np.ones((2, 3)), [5, 6], [1, 2, 3], [0, 0], [0, 0, 0])
    assert out["num_valid"] == 0 and out["num_skipped"] == 2
    assert np.isnan(out["mAP"]) and np.isnan(out["cmc"]).all()
    assert out["all_AP"].shape == (0,)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    out = evaluate(
        torch.tensor([[0.2, 0.1]]), torch.tensor([1]), torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([1, 1])
    )
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"q_pids": [1, 2, 3]}, "q_pids has 3 entries"),
        ({"g_camids": [0]}, "g_camids has 1 entries"),
        ({"distmat": np.zeros((0, 2))}, "0 queries"),
        ({"distmat": np.zeros((2, 0)), "g_pids": [], "g_camids": []}, "0 gallery"),
        ({"distmat": np.zeros(3)}, "2-D"),
        ({"ap": "11-point"}, "AP variant"),
        ({"distmat": np.array([[np.nan, 0.0], [0.0, 0.0]])}, "NaN"),
        ({"max_rank": 0}, "max_rank"),
    ],
)
def test_errors_are_one_sentence(kwargs, message):
    args = {"distmat": np.zeros((2, 2)), "q_pids": [1, 2], "g_pids": [1, 2], "q_camids": [0, 0], "g_camids": [1, 1]}
    args.update(kwargs)
    with pytest.raises(MdprError, match=message):
        evaluate(**args)
