"""CPU inference backends: throughput (images/s, batch 32) and latency (ms, batch 1) of the same model run by
torch eager fp32, torch channels-last, ONNX Runtime fp32, OpenVINO fp32, and the INT8 file (onnxruntime static
QDQ quantisation) on ONNX Runtime and on OpenVINO.

Every row is a ratio against torch eager measured in the same run (the backends' calls are interleaved, so
load from other processes hits all of them alike; median of the repeats) plus the smallest cosine of its
features against torch eager on the batch-32 images. All backends use the same number of threads. Models are
randomly initialised (speed does not depend on the weights); the INT8 ranges are calibrated on random pixels,
so the INT8 cosine here only shows the graph is sound -- its accuracy cost on real data is measured by
``mdpr export --int8 --dataset``.

    python benchmarks/backend_speed.py                 # tracker-r18 and MDPR-R50-IBN at 256x128 and 384x192
    python benchmarks/backend_speed.py --quick --json  # a tiny model, seconds (run by the tests)
    python benchmarks/backend_speed.py --models tracker-r18 --sizes 256x128 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from timing import interleaved

from mdpr.config import load_config
from mdpr.export import export_model, open_runner
from mdpr.export.extras import openvino_available
from mdpr.export.parity import row_cosines
from mdpr.export.quantize import quantize_onnx
from mdpr.model import build_model
from mdpr.runtime import usable_cpu_count

#: name -> config overrides on top of a recipe
MODELS: Dict[str, Tuple[str, List[str]]] = {
    "tracker-r18": ("tracker-r18", []),
    "mdpr-r50-ibn": ("market1501", ["model.depth=50", "model.ibn=true", "model.embedding_dim=512"]),
    "tiny": ("demo-cpu", ["model.depth=18", "model.ibn=false", "model.embedding_dim=16"]),
}
BACKENDS = ["torch", "torch-channels-last", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8"]


def _machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {usable_cpu_count()} usable cores, {threads} threads per backend, load average {load:.1f} "
            f"at start, torch {torch.__version__}")


def _runners(model: torch.nn.Module, cfg: Any, size: Tuple[int, int], folder: Path, calib: np.ndarray,
             threads: int) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    """backend name -> function of float32 (N, 3, H, W) 0..255 images returning features."""
    cl_model = build_model(cfg).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def channels_last(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return cl_model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    fns: Dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch": eager, "torch-channels-last": channels_last}
    fp32 = folder / "fp32.onnx"
    report = export_model(None, fp32, model=model, config=cfg, batch_sizes=(1, 2))
    assert report.passed, report.to_dict()
    int8 = folder / "int8.onnx"
    quantize_onnx(fp32, int8, report.metadata, calib)
    fns["onnxruntime"] = open_runner(fp32, "onnxruntime", threads=threads).run
    fns["onnxruntime-int8"] = open_runner(int8, "onnxruntime", threads=threads).run
    if openvino_available():
        fns["openvino"] = open_runner(fp32, "openvino", threads=threads).run
        fns["openvino-int8"] = open_runner(int8, "openvino", threads=threads).run
    return fns


def measure(name: str, size: Tuple[int, int], batch: int, repeats: int, threads: int) -> List[Dict[str, Any]]:
    recipe, overrides = MODELS[name]
    cfg = load_config(recipe, overrides + [f"input.size_test=[{size[0]},{size[1]}]",
                                           f"input.size_train=[{size[0]},{size[1]}]"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 3, *size)).astype(np.float32)
    single = images[:1].copy()
    calib = rng.integers(0, 256, (16, 3, *size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fns = _runners(model, cfg, size, Path(tmp), calib, threads)
        reference = fns["torch"](images)
        cosines = {b: float(row_cosines(fn(images), reference).min()) for b, fn in fns.items()}
        through = interleaved({b: (lambda fn=fn: fn(images)) for b, fn in fns.items()}, repeats)
        latency = interleaved({b: (lambda fn=fn: fn(single)) for b, fn in fns.items()}, max(repeats, 3) * 3)
    base_t = batch / statistics.median(through["torch"])
    base_l = statistics.median(latency["torch"]) * 1000
    rows = []
    for backend in BACKENDS:
        if backend not in fns:
            continue
        ips = batch / statistics.median(through[backend])
        ms = statistics.median(latency[backend]) * 1000
        rows.append({
            "model": name, "size": f"{size[0]}x{size[1]}", "feature_dim": int(reference.shape[1]),
            "backend": backend, "images_per_s": ips, "throughput_ratio": ips / base_t, "latency_ms": ms,
            "latency_ratio": ms / base_l, "min_cosine": cosines[backend],
        })
    return rows


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tracker-r18,mdpr-r50-ibn", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--sizes", default="256x128,384x192", help="comma-separated HxW")
    parser.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (latency: 3x as many)")
    parser.add_argument("--threads", type=int, default=0, help="threads of every backend (0 = usable cores)")
    parser.add_argument("--quick", action="store_true", help="tiny model at 64x32, batch 4, one round")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.batch, args.repeats = "tiny", "64x32", 4, 1
    threads = args.threads or usable_cpu_count()
    torch.set_num_threads(threads)
    machine = _machine(threads)
    rows: List[Dict[str, Any]] = []
    for name in args.models.split(","):
        for text in args.sizes.split(","):
            h, w = (int(v) for v in text.lower().split("x"))
            done = measure(name.strip(), (h, w), args.batch, args.repeats, threads)
            rows.extend(done)
            print(json.dumps(done), file=sys.stderr, flush=True)  # partial results of a long run
    result = {"date": datetime.date.today().isoformat(), "machine": machine, "batch": args.batch,
              "repeats": args.repeats, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"# CPU inference backends -- {result['date']}, {machine}")
    print(f"throughput at batch {args.batch}, latency at batch 1; median of {args.repeats} (latency "
          f"{max(args.repeats, 3) * 3}) interleaved rounds; ratios against torch eager in the same run")
    print(f"{'model':14} {'size':8} {'backend':20} {'img/s':>8} {'x eager':>8} {'ms @1':>8} {'x eager':>8} {'min cos':>10}")
    for r in rows:
        print(f"{r['model']:14} {r['size']:8} {r['backend']:20} {r['images_per_s']:8.1f} {r['throughput_ratio']:8.2f} "
              f"{r['latency_ms']:8.1f} {r['latency_ratio']:8.2f} {r['min_cosine']:10.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
