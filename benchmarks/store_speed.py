"""Feature store speed: extraction end-to-end vs model-only, search vs reading the store, `mdpr query` wall time.

Every ratio compares two measurements taken in the same run, interleaved (A, B, A, B, ...) so that load from
other processes hits both alike; medians are reported.

1. extract  -- images/s of the whole pipeline (JPEG decode + resize in DataLoader workers, model, journal and
               store writes: ``mdpr.workflows.extract.extract_to_store``) against the model alone on ready-made
               batches, for MDPR-R50-IBN at 384x192 and a small backbone (ResNet-18). Target: >= 0.9.
2. search   -- one probe against N x D stores on disk: ``mdpr.search.search(store, ...)`` against reading the
               features once (h5py, in the stored dtype), warm (page cache) and cold (pages dropped with
               posix_fadvise); and with the features in memory (``GalleryIndex``, float32) against one
               float32 matrix-vector product of the same size. Targets: <= 1.5.
3. query    -- wall time of ``mdpr query probe.jpg --gallery store.h5 --weights ckpt --json`` from the shell for a
               100,000-entry store and a small-backbone (ResNet-18) checkpoint, next to ``import torch, h5py``
               alone. Target: < 3 s on 2 cores.

    python benchmarks/store_speed.py                         # everything (about 10-20 minutes on 2 cores)
    python benchmarks/store_speed.py --parts search --rows 1000000 --dim 512
    python benchmarks/store_speed.py --parts extract --images 64 --repeats 3
    python benchmarks/store_speed.py --parts query --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
from timing import interleaved


def med(values: List[float]) -> float:
    return float(statistics.median(values))


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------------------------------- extract


def make_images(folder: Path, n: int, size: tuple) -> List[Path]:
    """``n`` JPEG crops of ``size`` (h, w) that look like photos (smooth shapes + noise), Market-style names."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    h, w = size
    for i in range(n):
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(60, 200, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
            draw.ellipse((x0, y0, x0 + int(rng.integers(4, w)), y0 + int(rng.integers(4, h))),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
        arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i % 500 + 1:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def bench_extract(args: argparse.Namespace, work: Path) -> List[Dict[str, Any]]:
    # Market-1501-sized crops (128x64 JPEG). The heavy models get fewer images per run so that a run stays short.
    images = make_images(work / "crops", args.images, (128, 64))
    configs = [
        ("MDPR-R50-IBN 384x192 (paper)", [], max(8, args.images // 4)),
        ("MDPR-R18 384x192, 512-d emb.", ["model.depth=18", "model.ibn=false"], max(8, args.images // 4)),
        ("MDPR-R18 128x64, 128-d emb. (demo-cpu)", ["model.depth=18", "model.ibn=false", "model.embedding_dim=128",
                                                    "input.size_test=[128,64]"], args.images),
    ]
    wanted = [c for c in configs if not args.models or any(m in c[0] for m in args.models.split(","))]
    return [_bench_extract_model(args, work, name, overrides, images[:n]) for name, overrides, n in wanted]


def _bench_extract_model(args: argparse.Namespace, work: Path, name: str, overrides: List[str],
                         images: List[Path]) -> Dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from mdpr.config import load_config
    from mdpr.inference import FeatureExtractor, ImageFileDataset, collate_images, items_from_folder
    from mdpr.model import build_model, save_checkpoint
    from mdpr.workflows.extract import extract_to_store

    folder = work / f"crops-{len(images)}"
    if not folder.exists():
        folder.mkdir()
        for p in images:
            os.link(p, folder / p.name)
    items = items_from_folder(folder)
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    ckpt = save_checkpoint(work / "bench-model.pt", build_model(cfg).eval(), cfg)
    batch = min(args.batch_size, len(images))
    # Loaded from a file like `mdpr extract` does: the weights are hashed once (a fixed start-up cost that
    # `--parts query` reports), not in every timed run.
    extractor = FeatureExtractor(ckpt, device="cpu", batch_size=batch, num_workers=args.workers)
    h, w = cfg.input.size_test
    batches = [torch.rand(batch, 3, h, w) * 255 for _ in range(max(1, len(images) // batch))]
    n_model = len(batches) * batch
    counter = {"i": 0}

    def model_only() -> None:
        for b in batches:
            extractor._embed(b)

    def end_to_end() -> None:
        counter["i"] += 1
        out = work / f"e2e-{counter['i']}.h5"
        extract_to_store(extractor, items, out, root=folder)
        out.unlink()

    def decode_only() -> None:
        workers = extractor.num_workers
        loader = DataLoader(ImageFileDataset(images, extractor.transform), batch_size=args.batch_size,
                            num_workers=workers, collate_fn=collate_images, prefetch_factor=4 if workers else None)
        for _ in loader:
            pass

    times = interleaved({"model": model_only, "end_to_end": end_to_end, "decode_only": decode_only}, args.repeats)
    model_ips = n_model / med(times["model"])
    e2e_ips = len(images) / med(times["end_to_end"])
    decode_ips = len(images) / med(times["decode_only"])
    print(f"extract  {name:22s} model-only {model_ips:7.2f} img/s   end-to-end {e2e_ips:7.2f} img/s   "
          f"ratio {e2e_ips / model_ips:.3f}   (decoding alone {decode_ips:.0f} img/s, {extractor.num_workers} "
          f"worker(s), {torch.get_num_threads()} torch threads)", flush=True)
    return {
        "model": name, "feature_dim": extractor.feature_dim, "batch_size": args.batch_size,
        "workers": extractor.num_workers, "torch_threads": torch.get_num_threads(),
        "model_only_img_s": round(model_ips, 2), "end_to_end_img_s": round(e2e_ips, 2),
        "decode_only_img_s": round(decode_ips, 1), "ratio": round(e2e_ips / model_ips, 3),
        "runs": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
    }


# ------------------------------------------------------------------------------------------------------ search


def build_store(path: Path, rows: int, dim: int, dtype: str, fingerprint: str = "bench") -> float:
    """A store of random unit vectors, written block by block with StoreWriter; returns seconds taken."""
    from mdpr.store import StoreMeta, StoreWriter

    rng = np.random.default_rng(1)
    meta = StoreMeta(dim=dim, dtype=dtype, fingerprint=fingerprint, normalized=True,
                     preprocessing={"size": [384, 192]}, root="/nonexistent/gallery")
    start = time.perf_counter()
    block = max(1, (64 << 20) // (dim * 4))
    with StoreWriter(path, meta, checkpoint_interval=1e9) as writer:
        for s in range(0, rows, block):
            n = min(block, rows - s)
            feats = rng.standard_normal((n, dim), dtype=np.float32)
            writer.add(feats, [f"cam{(s + i) % 6 + 1}/{s + i:07d}.jpg" for i in range(n)],
                       pids=(np.arange(s, s + n) // 20), camids=np.arange(s, s + n) % 6)
    return time.perf_counter() - start


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_search(args: argparse.Namespace, work: Path) -> List[Dict[str, Any]]:
    return [_bench_search_size(args, work, rows, dim)
            for rows, dim in ((args.rows, args.dim), (args.rows_wide, args.dim_wide))]


def _bench_search_size(args: argparse.Namespace, work: Path, rows: int, dim: int) -> Dict[str, Any]:
    path = work / f"store-{rows}x{dim}.h5"
    write_s = build_store(path, rows, dim, "float16")
    size_gb = path.stat().st_size / 1e9
    print(f"search   built {rows:,} x {dim} float16 store ({size_gb:.2f} GB) in {write_s:.1f} s "
          f"({rows / write_s:,.0f} rows/s through the journal and one fold)", flush=True)
    probe = np.random.default_rng(2).standard_normal((1, dim)).astype(np.float32)
    warm, cold = _on_disk(args, path, probe)
    mem, mv = _in_memory(args, path, probe)
    path.unlink()
    row = {
        "rows": rows, "dim": dim, "dtype": "float16", "store_gb": round(size_gb, 3),
        "warm_read_s": round(med(warm["read"]), 4), "warm_search_s": round(med(warm["search"]), 4),
        "warm_ratio": round(med(warm["search"]) / med(warm["read"]), 3),
        "cold_read_s": round(med(cold["read"]), 4), "cold_search_s": round(med(cold["search"]), 4),
        "cold_ratio": round(med(cold["search"]) / med(cold["read"]), 3),
        "matvec_s": round(mv, 4), "memory_search_s": round(med(mem["search"]), 4),
        "memory_ratio": round(med(mem["search"]) / mv, 3),
    }
    print(f"search   {rows:,} x {dim}: on disk warm {row['warm_search_s']:.3f} s vs read {row['warm_read_s']:.3f} s "
          f"(ratio {row['warm_ratio']:.2f}); cold {row['cold_search_s']:.3f} s vs read {row['cold_read_s']:.3f} s "
          f"(ratio {row['cold_ratio']:.2f}); in memory {row['memory_search_s']:.3f} s vs mat-vec "
          f"{row['matvec_s']:.3f} s (ratio {row['memory_ratio']:.2f})", flush=True)
    return row


def _on_disk(args: argparse.Namespace, path: Path, probe: np.ndarray) -> tuple:
    from mdpr.search import search
    from mdpr.store import FeatureStore

    def read_once(store: FeatureStore) -> None:
        for _ in store.features(dtype=store.dtype):
            pass

    def search_disk(store: FeatureStore) -> None:
        search(store, probe, top_k=10)

    with FeatureStore.open(path) as store:
        warm = interleaved({"read": lambda: read_once(store), "search": lambda: search_disk(store)}, args.repeats)

    def cold(fn: Callable[[FeatureStore], None]) -> Callable[[], None]:
        def run() -> None:
            # A fresh store each time: pages still mapped by an open store cannot be dropped. Opening and
            # dropping happen inside the timed call for both, so they cancel out in the ratio.
            drop_cache(path)
            with FeatureStore.open(path) as store:
                fn(store)
        return run

    cold_t = interleaved({"read": cold(read_once), "search": cold(search_disk)}, args.repeats, warmup=False)
    return warm, cold_t


def _in_memory(args: argparse.Namespace, path: Path, probe: np.ndarray) -> tuple:
    import torch

    from mdpr.search import GalleryIndex, search
    from mdpr.store import FeatureStore

    with FeatureStore.open(path) as store:
        index = GalleryIndex.from_store(store)
    x32 = index.features
    x32_np = x32.numpy()
    q32 = torch.from_numpy(probe[0])

    def matvec_torch() -> None:
        torch.mv(x32, q32)

    def matvec_numpy() -> None:
        x32_np @ probe[0]

    def search_mem() -> None:
        search(index, probe, top_k=10)

    mem = interleaved({"matvec_torch": matvec_torch, "matvec_numpy": matvec_numpy, "search": search_mem}, args.repeats)
    return mem, min(med(mem["matvec_torch"]), med(mem["matvec_numpy"]))


# ------------------------------------------------------------------------------------------------------- query


def bench_query(args: argparse.Namespace, work: Path) -> List[Dict[str, Any]]:
    configs = [
        ("MDPR-R18, 512-d emb., 384x192", ["model.depth=18", "model.ibn=false"]),
        ("MDPR-R18, 128-d emb., 128x64 (demo-cpu)", ["model.depth=18", "model.ibn=false", "model.embedding_dim=128",
                                                     "input.size_test=[128,64]"]),
    ]
    return [_bench_query_model(args, work, name, overrides) for name, overrides in configs]


def _bench_query_model(args: argparse.Namespace, work: Path, name: str, overrides: List[str]) -> Dict[str, Any]:
    import torch

    from mdpr.config import load_config
    from mdpr.inference import FeatureExtractor
    from mdpr.model import build_model, load_model, save_checkpoint
    from mdpr.model.saving import state_dict_fingerprint
    from mdpr.search import search
    from mdpr.store import FeatureStore

    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    ckpt = save_checkpoint(work / "query-model.pt", build_model(cfg).eval(), cfg)
    fx = FeatureExtractor(ckpt, device="cpu", num_workers=0)
    path = work / "query-store.h5"
    build_store(path, args.query_rows, fx.feature_dim, "float16", fingerprint=fx.fingerprint)
    probe = make_images(work / "probe", 1, (128, 64))[0]
    cmd = [sys.executable, "-m", "mdpr", "query", str(probe), "--gallery", str(path), "--weights", str(ckpt),
           "--device", "cpu", "--json"]
    startup = [sys.executable, "-c", "import torch, h5py"]  # the libraries `mdpr query` needs
    help_cmd = [sys.executable, "-m", "mdpr", "--help"]
    homes = {"n": 0}

    def shell(c: List[str], fresh_home: bool = False) -> Callable[[], None]:
        def run() -> None:
            homes["n"] += fresh_home
            home = work / (f"home-{homes['n']}" if fresh_home else "home")  # fresh: weights not hashed yet
            env = dict(os.environ, MDPR_HOME=str(home))
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            subprocess.run(c, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return run

    times = interleaved({"query": shell(cmd), "query_first": shell(cmd, fresh_home=True),
                         "imports": shell(startup), "help": shell(help_cmd)}, args.repeats)
    # Where the time goes, measured in this process (imports already paid), with the CLI's thread choice.
    from mdpr.runtime import choose_cpu_threads

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(choose_cpu_threads(args.threads)[0])
    parts: Dict[str, float] = {}
    start = time.perf_counter()
    model, _ = load_model(ckpt)
    parts["load_model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    state_dict_fingerprint(model.state_dict())
    parts["fingerprint_s"] = time.perf_counter() - start
    start = time.perf_counter()
    feats = fx([probe])
    parts["embed_probe_s"] = time.perf_counter() - start
    with FeatureStore.open(path) as store:
        start = time.perf_counter()
        search(store, feats, top_k=10)
        parts["search_s"] = time.perf_counter() - start
    torch.set_num_threads(previous_threads)
    row = {
        "model": name, "rows": args.query_rows, "dim": fx.feature_dim, "dtype": "float16",
        "checkpoint_mb": round(ckpt.stat().st_size / 1e6, 1), "store_gb": round(path.stat().st_size / 1e9, 3),
        "query_wall_s": round(med(times["query"]), 3), "query_runs": [round(t, 3) for t in times["query"]],
        "first_query_wall_s": round(med(times["query_first"]), 3),
        "import_torch_h5py_s": round(med(times["imports"]), 3),
        "mdpr_help_s": round(med(times["help"]), 3),
        **{k: round(v, 3) for k, v in parts.items()},
    }
    print(f"query    {name}: 1 probe vs {args.query_rows:,} x {fx.feature_dim} float16 "
          f"({row['checkpoint_mb']} MB checkpoint): {row['query_wall_s']:.2f} s wall "
          f"({row['first_query_wall_s']:.2f} s the first time, weights not hashed yet); importing "
          f"torch+h5py alone {row['import_torch_h5py_s']:.2f} s, `mdpr --help` "
          f"{row['mdpr_help_s']:.2f} s; in-process: load {row['load_model_s']:.2f} s, fingerprint "
          f"{row['fingerprint_s']:.2f} s, embed {row['embed_probe_s']:.2f} s, search {row['search_s']:.2f} s", flush=True)
    path.unlink()
    shutil.rmtree(work / "probe", ignore_errors=True)
    return row


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="extract,search,query", help="comma-separated: extract, search, query")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=256, help="images per extraction run (1/4 for the big models)")
    parser.add_argument("--models", default="", help="extract: only models whose name contains one of these (comma-separated)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: mdpr's default)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rows-wide", type=int, default=100_000)
    parser.add_argument("--dim-wide", type=int, default=4608)
    parser.add_argument("--query-rows", type=int, default=100_000)
    parser.add_argument("--workdir", default=None, help="where to write the temporary stores (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    report: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_before": load(),
    }
    print(f"store_speed: {report['cpus']} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {report['load_before']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mdpr-store-bench-", dir=args.workdir))
    try:
        if "extract" in parts:
            report["extract"] = bench_extract(args, work)
        if "search" in parts:
            report["search"] = bench_search(args, work)
        if "query" in parts:
            report["query"] = bench_query(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = load()
    print(f"load average after: {report['load_after']}", flush=True)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
