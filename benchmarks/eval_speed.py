"""Speed and memory of mdpr's evaluation, as ratios to plain numpy/torch work timed in the same run.

    python benchmarks/eval_speed.py                     # Market-1501 sized metrics and re-ranking
    python benchmarks/eval_speed.py --quick             # small sizes, a few seconds
    python benchmarks/eval_speed.py --parts msmt        # re-rank an MSMT17-sized set (minutes, ~7 GB)

Metrics: ``evaluate`` on a (queries x gallery) float32 distance matrix versus one full row-wise
``np.argsort`` of the same matrix (what torchreid / fast-reid start with); extra memory is the
tracemalloc peak of ``evaluate`` (numpy reports its buffers to tracemalloc).

Re-ranking: ``re_rank`` on N = queries + gallery features versus one N x N float32 matmul of the
same features; memory is measured in a fresh child process that only builds the features and
re-ranks: its resident memory just before ``re_rank`` and its peak resident memory during it
(Linux ``VmHWM``, reset before the call through ``/proc/self/clear_refs``; elsewhere the
process's lifetime peak from ``resource.getrusage``).

Features are synthetic but shaped like a trained model's: identities are clusters, so neighbour
lists and positive ranks look like real ones (the printed mAP says how hard the case is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Dict

import numpy as np

MARKET = (3368, 15913)
MSMT = (11659, 82161)


def clustered_features(num: int, dim: int, num_ids: int, noise: float, seed: int) -> tuple:
    """(features float32, pids): each image is its identity's centre plus Gaussian noise, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    pids = rng.integers(0, num_ids, num)
    feats = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, 4096):  # in blocks: keeps the generator's temporaries small
        stop = min(num, start + 4096)
        block = centres[pids[start:stop]] + noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
        feats[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return feats, pids


def market_case(num_q: int, num_g: int, dim: int, noise: float, seed: int = 0) -> Dict[str, Any]:
    """Queries and gallery of one synthetic test set: 6 cameras, ~1/8 of the gallery distractors."""
    num_ids = max(2, (num_q + num_g) // 25)
    feats, pids = clustered_features(num_q + num_g, dim, num_ids, noise, seed)
    rng = np.random.default_rng(seed + 1)
    pids = pids + 1
    pids[num_q:][rng.random(num_g) < 0.125] = 0  # distractors
    cams = rng.integers(0, 6, num_q + num_g)
    return {"qf": feats[:num_q], "gf": feats[num_q:], "q_pids": pids[:num_q], "g_pids": pids[num_q:],
            "q_camids": cams[:num_q], "g_camids": cams[num_q:]}


def best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_metrics(num_q: int, num_g: int, noise: float, repeats: int) -> Dict[str, Any]:
    from mdpr.evaluation import compute_distance, evaluate

    case = market_case(num_q, num_g, 128, noise)
    dist = compute_distance(case["qf"], case["gf"])
    labels = (case["q_pids"], case["g_pids"], case["q_camids"], case["g_camids"])
    argsort_s = best_of(lambda: np.argsort(dist, axis=1), repeats)
    evaluate_s = best_of(lambda: evaluate(dist, *labels), repeats)
    tracemalloc.start()
    result = evaluate(dist, *labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "shape": list(dist.shape), "noise": noise, "mAP": result["mAP"], "rank1": float(result["cmc"][0]),
        "argsort_s": argsort_s, "evaluate_s": evaluate_s, "time_ratio": evaluate_s / argsort_s,
        "extra_mb": peak / 2**20, "distmat_mb": dist.nbytes / 2**20, "memory_ratio": peak / dist.nbytes,
    }


def _rss_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), else the lifetime peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child_rerank(num_q: int, num_g: int, dim: int, method: str) -> None:
    """Runs in a fresh process: build features, re-rank, print time and memory as JSON."""
    import torch  # noqa: F401  (imported before timing, as in any real use)

    from mdpr.evaluation import re_rank

    case = market_case(num_q, num_g, dim, noise=1.3)
    qf, gf = case["qf"], case["gf"]
    del case
    re_rank(qf[:20], gf[:40], method=method)  # warm-up: first-call costs of torch kernels
    before = _rss_bytes("VmRSS")
    peak_is_call_only = _reset_peak()
    t0 = time.perf_counter()
    out = re_rank(qf, gf, method=method)
    seconds = time.perf_counter() - t0
    peak = _rss_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak, "rss_before_bytes": before,
                      "peak_is_call_only": peak_is_call_only, "shape": list(out.shape)}))


def bench_rerank(num_q: int, num_g: int, dim: int, method: str, with_matmul: bool = True) -> Dict[str, Any]:
    import torch

    from mdpr.evaluation import estimate_re_rank

    record: Dict[str, Any] = {"images": num_q + num_g, "dim": dim, "method": method,
                              "estimate": estimate_re_rank(num_q, num_g, dim)}
    cmd = [sys.executable, os.path.abspath(__file__), "--child-rerank", str(num_q), str(num_g), str(dim), method]
    child = subprocess.run(cmd, capture_output=True, text=True, check=True)
    record.update(json.loads(child.stdout.strip().splitlines()[-1]))
    if with_matmul:
        case = market_case(num_q, num_g, dim, noise=1.3)
        x = torch.from_numpy(np.concatenate([case["qf"], case["gf"]]))
        del case
        t0 = time.perf_counter()
        product = torch.mm(x, x.T)
        record["matmul_s"] = time.perf_counter() - t0
        del product
        record["time_ratio"] = record["seconds"] / record["matmul_s"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--parts", default="metrics,rerank",
                        help="comma-separated: metrics, rerank (Market-sized), msmt (MSMT17-sized re-ranking)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of the metrics (best is kept)")
    parser.add_argument("--child-rerank", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rerank:
        q, g, d, method = args.child_rerank
        child_rerank(int(q), int(g), int(d), method)
        return

    import torch

    num_q, num_g = (300, 1400) if args.quick else MARKET
    dim = 256 if args.quick else 2048
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}, "
          f"torch {torch.__version__}")
    parts = set(args.parts.split(","))
    if "metrics" in parts:
        for noise, label in ((1.3, "trained-like model"), (3.0, "weak model")):
            m = bench_metrics(num_q, num_g, noise, args.repeats)
            print(f"metrics {m['shape'][0]} x {m['shape'][1]} ({label}, mAP {m['mAP']:.3f}): evaluate "
                  f"{m['evaluate_s']:.3f} s vs argsort {m['argsort_s']:.3f} s -> {m['time_ratio']:.2f}x; extra memory "
                  f"{m['extra_mb']:.1f} MB = {m['memory_ratio']:.2f}x the {m['distmat_mb']:.0f} MB matrix")
    if "rerank" in parts:
        for method in ("jaccard", "zhong"):
            r = bench_rerank(num_q, num_g, dim, method)
            print(f"re-rank {method} N={r['images']} d={dim}: {r['seconds']:.1f} s vs N x N matmul "
                  f"{r['matmul_s']:.1f} s -> {r['time_ratio']:.2f}x; {_memory_text(r)}")
    if "msmt" in parts:
        r = bench_rerank(*MSMT, 2048, "jaccard", with_matmul=False)
        print(f"re-rank jaccard N={r['images']} d=2048 (MSMT17-sized): {r['seconds']:.0f} s; {_memory_text(r)}")


def _memory_text(r: Dict[str, Any]) -> str:
    during = "during re_rank" if r["peak_is_call_only"] else "process lifetime"
    return (f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GB ({during}; {r['rss_before_bytes'] / 2**30:.2f} GB "
            f"just before, so +{(r['peak_rss_bytes'] - r['rss_before_bytes']) / 2**30:.2f} GB); estimate "
            f"{r['estimate']['seconds']:.0f} s / +{r['estimate']['bytes'] / 2**30:.2f} GB")


if __name__ == "__main__":
    main()
