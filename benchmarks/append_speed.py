"""Appends that cost what they add: bytes written by appending to a store, and the cost of compacting.

Two ratios, each from measurements taken in the same run:

1. append  -- bytes written (``wchar`` of /proc/self/io: every write(2) of the process: journal, segment,
              master) by ``StoreWriter`` appending ``--append-rows`` rows to an ``--rows`` x ``--dim`` float16
              store, against appending the same rows with ``layout="single"`` (the whole store rewritten, as
              mdpr did before segments). Goal: <= 2%. Seconds are reported too (median of interleaved runs).
2. compact -- seconds of ``mdpr.store.compact`` on the same rows spread over ``--segments`` segments, against
              one sequential read of the store's files and write of as many bytes to a new file (fsync'd
              like the store's writes). Goal: <= 1.5x.

    python benchmarks/append_speed.py                 # 1M x 512 float16 (about 1 GB per store copy)
    python benchmarks/append_speed.py --quick         # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
from timing import interleaved

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdpr.store import FeatureStore, StoreMeta, StoreWriter, compact, store_bytes  # noqa: E402
from mdpr.store.hdf5 import next_segment, write_file_atomic, write_master  # noqa: E402
from mdpr.store.schema import Rows  # noqa: E402
from mdpr.store.validation import segments_dir_for  # noqa: E402


def written_bytes() -> int:
    """Bytes this process has passed to write(2) so far (Linux); -1 where unknown."""
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def blocks(rows: int, dim: int, start: int = 0, block: int = 65536) -> Iterator[Rows]:
    rng = np.random.default_rng(start)
    for lo in range(start, start + rows, block):
        hi = min(start + rows, lo + block)
        feats = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        yield Rows(feats.astype(np.float16), [f"cam{i % 6}/{i:09d}.jpg" for i in range(lo, hi)],
                   np.arange(lo, hi, dtype=np.int32) % 5000, np.arange(lo, hi, dtype=np.int32) % 6)


def build_single(path: Path, meta: StoreMeta, rows: int) -> None:
    write_file_atomic(path, meta, blocks(rows, meta.dim), failed=[], created="bench", complete=True, rows_hint=rows)


def build_segmented(path: Path, meta: StoreMeta, rows: int, segments: int) -> None:
    folder = segments_dir_for(path)
    folder.mkdir(parents=True)
    per = -(-rows // segments)
    done = []
    for k in range(segments):
        lo, hi = k * per, min(rows, (k + 1) * per)
        seg = next_segment(folder)
        write_file_atomic(seg, meta, blocks(hi - lo, meta.dim, lo), failed=[], created="bench", complete=True,
                          rows_hint=hi - lo)
        done.append((seg, hi - lo))
    write_master(path, meta, done, failed=[], created="bench", complete=True, stamp="bench", history=())


def link_copy(src: Path, dst_dir: Path) -> Path:
    """A fresh store at ``dst_dir/<name>`` sharing ``src``'s (immutable) files: hard links, no bytes copied."""
    dst_dir.mkdir(parents=True)
    dst = dst_dir / src.name
    os.link(src, dst)
    seg = segments_dir_for(src)
    if seg.is_dir():
        segments_dir_for(dst).mkdir()
        for f in seg.iterdir():
            os.link(f, segments_dir_for(dst) / f.name)
    return dst


def drop_cache(path: Path) -> None:
    files = [path] + (sorted(segments_dir_for(path).iterdir()) if segments_dir_for(path).is_dir() else [])
    for f in files:
        if hasattr(os, "posix_fadvise"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sequential_copy(path: Path, out: Path) -> int:
    """One sequential read of the store's files and a write of as many bytes (fsync'd): the baseline."""
    files = [path] + sorted(segments_dir_for(path).iterdir())
    n = 0
    with open(out, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                while True:
                    buf = src.read(16 << 20)
                    if not buf:
                        break
                    dst.write(buf)
                    n += len(buf)
        dst.flush()
        os.fsync(dst.fileno())
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--append-rows", type=int, default=1000)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="folder for the temporary stores (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dim, args.append_rows, args.repeats = 20_000, 64, 1000, 2
    meta = StoreMeta(dim=args.dim, dtype="float16", fingerprint="bench", normalized=True)
    work = Path(tempfile.mkdtemp(prefix="mdpr-append-bench-", dir=args.workdir))
    try:
        base = work / "base" / "s.h5"
        base.parent.mkdir()
        build_single(base, meta, args.rows)
        seg_base = work / "segbase" / "s.h5"
        seg_base.parent.mkdir()
        build_segmented(seg_base, meta, args.rows, args.segments)
        new = list(blocks(args.append_rows, args.dim, start=args.rows))
        trial = [0]
        bytes_of: Dict[str, List[int]] = {"append": [], "rewrite": []}

        def appending(layout: str, name: str) -> None:
            trial[0] += 1
            store = link_copy(base, work / f"t{trial[0]}")
            before = written_bytes()
            with StoreWriter(store, meta, layout=layout) as w:
                for rows in new:
                    w.add(rows.features, rows.paths, rows.pids, rows.camids)
            bytes_of[name].append(written_bytes() - before)
            with FeatureStore.open(store) as check:
                assert len(check) == args.rows + args.append_rows
            shutil.rmtree(store.parent)

        times = interleaved({"append": lambda: appending("auto", "append"),
                             "rewrite": lambda: appending("single", "rewrite")}, args.repeats, warmup=False)

        seconds: Dict[str, List[float]] = {"compact": [], "read+write": []}

        def compacting() -> None:
            trial[0] += 1
            store = link_copy(seg_base, work / f"t{trial[0]}")
            drop_cache(store)
            started = time.perf_counter()
            done = compact(store)
            seconds["compact"].append(time.perf_counter() - started)
            assert done.segments_before == args.segments and done.rows == args.rows
            shutil.rmtree(store.parent)

        def copying() -> None:
            drop_cache(seg_base)
            started = time.perf_counter()
            sequential_copy(seg_base, work / "copy.bin")
            seconds["read+write"].append(time.perf_counter() - started)
            (work / "copy.bin").unlink()

        interleaved({"compact": compacting, "read+write": copying}, args.repeats, warmup=False)
        med = {k: float(statistics.median(v)) for k, v in {**times, **seconds}.items()}
        result: Dict[str, Any] = {
            "rows": args.rows, "dim": args.dim, "dtype": "float16", "append_rows": args.append_rows,
            "segments": args.segments, "repeats": args.repeats, "store_bytes": store_bytes(base),
            "append_bytes": int(statistics.median(bytes_of["append"])),
            "rewrite_bytes": int(statistics.median(bytes_of["rewrite"])),
            "append_s": med["append"], "rewrite_s": med["rewrite"],
            "compact_s": med["compact"], "read_write_s": med["read+write"],
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
        }
        result["append_bytes_ratio"] = result["append_bytes"] / max(1, result["rewrite_bytes"])
        result["compact_ratio"] = result["compact_s"] / max(1e-9, result["read_write_s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    mb = 2**20
    print(f"store: {args.rows:,} x {args.dim} float16 ({result['store_bytes'] / mb:.0f} MiB), load {result['load']}")
    print(f"append {args.append_rows:,} rows: {result['append_bytes'] / mb:.2f} MiB written in {result['append_s']:.2f} s; "
          f"rewriting: {result['rewrite_bytes'] / mb:.1f} MiB in {result['rewrite_s']:.2f} s; "
          f"bytes ratio {result['append_bytes_ratio']:.2%} (goal <= 2%)")
    print(f"compact {args.segments} segments: {result['compact_s']:.2f} s; one read + write of the store: "
          f"{result['read_write_s']:.2f} s; ratio {result['compact_ratio']:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
