"""Search at scale: a faiss index beside the store against exact search, on clustered ReID-like features.

Features: identities of 20 crops each; identity centres drawn from an anisotropic Gaussian (the energy
of real ReID embeddings sits in a few hundred directions), L2-normalised, stored float16 like
``mdpr extract --half``. ``--structure appearance`` (default): identity centres gather in appearance
groups of 50 people (who dress alike: 70% of a centre is its group's), and an identity's crops are 4 walks
past a camera of 5 near-duplicate frames each (crop = centre + camera offset + walk offset + small frame
noise), as a gallery indexed from camera tracks is; probes are frames of new walks of stored identities.
``--structure tracklets``: the same walks, identity centres spread uniformly (no appearance groups).
``--structure crops``: identities spread uniformly, every crop an independent view (centre + camera
offset + noise), probes new views: the true neighbours spread over the most IVF cells (hardest).
``--structure demo``: features extracted by a trained model (``--seed-store``, default the gallery store of
an ``mdpr demo`` run made in ``--work``), projected to ``--dim`` and replicated with noise (DemoReplicas).

1. in-memory -- ``rows`` (1M) x 512: ``mdpr.workflows.index.build_index(kind="auto")`` (HNSW at this size),
   then per-probe latency of ``Index.search`` (shortlist rescored exactly from the store) against exact
   search of a float32 ``GalleryIndex`` in memory, interleaved; recall@10 against exact on probes.
   Targets: recall@10 >= 0.95 at >= 20x lower latency; index memory reported.
2. on-disk -- ``big_rows`` (5M) x 512 built from the on-disk store (IVF-PQ at this size) in a child process
   whose peak RSS is reported; recall@10 >= 0.90 and per-probe latency <= 20 ms against exact search of
   the store on disk.

Each build runs in its own process (peak RSS = ``ru_maxrss`` of that process). Stores are cached in
``--work`` between runs.

    python benchmarks/index_speed.py --quick                 # small sizes, well under a minute
    python benchmarks/index_speed.py --parts memory          # 1M x 512
    python benchmarks/index_speed.py --parts disk --work /data/bench --reuse   # reuse stores and fresh indexes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from timing import interleaved

ROOT = Path(__file__).resolve().parents[1]
CROPS_PER_ID = 20
CAMERAS = 6
TRACKLET = 5  # frames per tracklet: an identity's 20 crops are 4 walks past the cameras
TRACKLET_BLOCK = 4096
STRUCTURES = ("appearance", "tracklets", "crops", "demo")
IDS_PER_GROUP = 50  # identities that share an appearance group (clothing colours, build, carried bags)
GROUP_SHARE = 0.7  # how much of an identity's centre its group sets


def med(values: List[float]) -> float:
    return float(statistics.median(values))


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class ReidLike:
    """Deterministic generator of clustered ReID-like rows (any range of rows, without holding them all).

    ``structure="tracklets"``: a gallery indexed from cameras, where each identity's crops come in tracklets
    of ``TRACKLET`` near-duplicate frames of one walk past one camera; probes are new tracklets (another
    walk, any camera) of stored identities. ``"appearance"`` (the default): the same, with identity centres
    gathered in appearance groups of ``IDS_PER_GROUP``. ``"crops"``: every crop is an independent view of
    its identity (no near duplicates), which makes the true neighbours much harder to find.
    """

    def __init__(self, rows: int, dim: int, seed: int = 0, noise: float = 0.9, structure: str = "appearance") -> None:
        if structure not in STRUCTURES[:3]:
            raise SystemExit(f"--structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        rng = np.random.default_rng(seed)
        self.dim, self.seed, self.noise, self.structure = dim, seed, noise, structure
        ids = max(1, rows // CROPS_PER_ID)
        self.spectrum = np.arange(1, dim + 1, dtype=np.float32) ** -0.35  # about 150 effective dimensions
        centres = rng.standard_normal((ids, dim), dtype=np.float32) * self.spectrum
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        if structure == "appearance":
            # people who dress alike are near each other: identity centres gather around appearance groups
            groups = rng.standard_normal((max(1, ids // IDS_PER_GROUP), dim), dtype=np.float32) * self.spectrum
            groups /= np.linalg.norm(groups, axis=1, keepdims=True)
            pulled = GROUP_SHARE * groups[rng.integers(0, len(groups), ids)] + np.sqrt(1 - GROUP_SHARE**2) * self.centres
            self.centres = pulled / np.linalg.norm(pulled, axis=1, keepdims=True)
        cams = rng.standard_normal((CAMERAS, dim), dtype=np.float32) * self.spectrum
        self.cameras = 0.35 * cams / np.linalg.norm(cams, axis=1, keepdims=True)

    def _shaped(self, rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
        """``count`` offsets in the embedding's dominant directions, of sizes drawn from [low, high)."""
        x = rng.standard_normal((count, self.dim), dtype=np.float32) * self.spectrum
        size = rng.uniform(low, high, (count, 1)).astype(np.float32)
        return x * (size / np.linalg.norm(x, axis=1, keepdims=True))

    def _tracklets(self, first: int, last: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera and offset (a walk's pose, light and background) of tracklets ``first..last``, block by
        block of ``TRACKLET_BLOCK`` so that every range of rows sees the same tracklets."""
        cams, offsets = [], []
        for block in range(first // TRACKLET_BLOCK, last // TRACKLET_BLOCK + 1):
            rng = np.random.default_rng([self.seed, block, 1000 + salt])
            cams.append(rng.integers(0, CAMERAS, TRACKLET_BLOCK))
            offsets.append(self._shaped(rng, TRACKLET_BLOCK, 0.3, 1.0) * self.noise)
        lo = first - (first // TRACKLET_BLOCK) * TRACKLET_BLOCK
        return np.concatenate(cams)[lo : lo + last - first + 1], np.concatenate(offsets)[lo : lo + last - first + 1]

    def rows(self, start: int, stop: int, salt: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start, salt])
        count = stop - start
        ids = np.arange(start, stop) // CROPS_PER_ID % len(self.centres)
        if self.structure == "crops":
            cams = rng.integers(0, CAMERAS, count)
            # crops differ in quality (blur, occlusion, pose): the noise's size varies from crop to crop
            x = self.centres[ids] + self.cameras[cams] + self._shaped(rng, count, 0.3, 1.0) * self.noise
        else:
            tracklet = np.arange(start, stop) // TRACKLET
            cams, offsets = self._tracklets(int(tracklet[0]), int(tracklet[-1]), salt)
            at = tracklet - tracklet[0]
            # frames of one walk differ a little (a step, a detector box): small noise around the walk's view
            frames = self._shaped(rng, count, 0.05, 0.3) * self.noise
            x = self.centres[ids] + self.cameras[cams[at]] + offsets[at] + frames
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def probes(self, count: int, rows: int) -> np.ndarray:
        """New crops of stored identities: other views (``crops``) or frames of new walks (``tracklets``)."""
        rng = np.random.default_rng(self.seed + 7)
        picks = rng.choice(rows, size=count, replace=False)
        return np.concatenate([self.rows(int(r), int(r) + 1, salt=1 + i) for i, r in enumerate(picks)])

    def pids(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop) // CROPS_PER_ID


class DemoReplicas:
    """Features extracted by a trained model (``mdpr demo``'s gallery store), replicated with noise.

    The seed store's rows are projected to ``dim`` (a fixed random orthogonal map, which keeps their
    geometry) and normalised. Replica ``r`` of seed identity ``p`` is a new identity: all of ``p``'s crops
    moved by one offset drawn from the seed's between-identity covariance, each crop also moved by a
    little noise from the seed's within-identity covariance (``ROW_NOISE``), so that no two rows are equal.
    Probes are new views: a seed crop of a stored replica with within-identity noise of full size.
    """

    ROW_NOISE = 0.35  # of the within-identity spread, for stored rows
    PROBE_NOISE = 1.0  # of the within-identity spread, for probes

    def __init__(self, seed_store: Path, dim: int, seed: int = 0) -> None:
        from mdpr.store import FeatureStore

        if not seed_store.is_file():
            raise SystemExit(f"--seed-store {seed_store} does not exist; write one with `mdpr demo` (its gallery.h5)")
        with FeatureStore.open(seed_store) as store:
            x = store.read_features(dtype=np.float32)
            pids = np.asarray(store.pids, dtype=np.int64)
            self.seed_dim = int(store.dim)
        if x.shape[0] < 4 or len(np.unique(pids)) < 2:
            raise SystemExit(f"--seed-store {seed_store} needs at least 4 rows of 2 identities, it has {x.shape[0]} "
                             f"rows of {len(np.unique(pids))}")
        rng = np.random.default_rng(seed)
        if x.shape[1] != dim:
            basis, _ = np.linalg.qr(rng.standard_normal((max(dim, x.shape[1]), max(dim, x.shape[1]))))
            x = x @ basis[: x.shape[1], :dim].astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        self.dim, self.seed, self.base, self.seed_store = dim, seed, x, seed_store
        _, self.seed_pids = np.unique(pids, return_inverse=True)
        ids = int(self.seed_pids.max()) + 1
        centres = np.stack([x[self.seed_pids == p].mean(axis=0) for p in range(ids)])
        # square roots of the two covariances as (rank x dim) maps: z @ map is a draw with that covariance
        between = centres - centres.mean(axis=0)
        within = x - centres[self.seed_pids]
        self.between = self._root(between)
        self.within = self._root(within)
        self.ids_per_replica = ids

    def describe(self) -> Dict[str, Any]:
        return {"store": str(self.seed_store), "rows": len(self.base), "ids": self.ids_per_replica,
                "dim": self.seed_dim}

    @staticmethod
    def _root(deviations: np.ndarray) -> np.ndarray:
        _, s, vt = np.linalg.svd(deviations, full_matrices=False)
        return ((s / np.sqrt(deviations.shape[0]))[:, None] * vt).astype(np.float32)

    def _offsets(self, replica: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, replica, 1])
        return rng.standard_normal((self.ids_per_replica, self.between.shape[0]), dtype=np.float32) @ self.between

    def _noisy(self, seed_rows: np.ndarray, replicas: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
        moved = np.empty((len(seed_rows), self.dim), dtype=np.float32)
        for r in np.unique(replicas):
            of_r = replicas == r
            moved[of_r] = self._offsets(int(r))[self.seed_pids[seed_rows[of_r]]]
        noise = rng.standard_normal((len(seed_rows), self.within.shape[0]), dtype=np.float32) @ self.within
        x = self.base[seed_rows] + moved + scale * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def rows(self, start: int, stop: int, salt: int = 0) -> np.ndarray:
        at = np.arange(start, stop)
        rng = np.random.default_rng([self.seed, start, salt])
        return self._noisy(at % len(self.base), at // len(self.base), self.ROW_NOISE, rng)

    def pids(self, start: int, stop: int) -> np.ndarray:
        at = np.arange(start, stop)
        return at // len(self.base) * self.ids_per_replica + self.seed_pids[at % len(self.base)]

    def probes(self, count: int, rows: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 7)
        picks = rng.choice(rows, size=count, replace=False)
        return self._noisy(picks % len(self.base), picks // len(self.base), self.PROBE_NOISE, rng)


def seed_store(args: argparse.Namespace, work: Path) -> Path:
    """The demo structure's seed: ``--seed-store``, else the gallery store of an ``mdpr demo`` run in ``work``
    (trained on the first run, about 5 minutes on 2 cores, then cached)."""
    if args.seed_store is not None:
        return Path(args.seed_store)
    folder = work / "demo-seed"
    store = folder / "gallery.h5"
    if not store.is_file():
        env = {**os.environ, "MDPR_HOME": str(work / "mdpr-home"),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "mdpr", "demo", "--output", str(folder), "--device", "cpu"],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"mdpr demo failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return store


def generator(args: argparse.Namespace, work: Path, rows: int) -> Any:
    """The rows' generator: ReID-like synthetic features, or (``demo``) extracted features replicated."""
    if args.structure == "demo":
        return DemoReplicas(seed_store(args, work), args.dim)
    return ReidLike(rows, args.dim, structure=args.structure)


def store_name(args: argparse.Namespace, work: Path, rows: int) -> str:
    structure = args.structure
    if structure == "demo":  # a store replicated from another seed is another store
        structure += "-" + hashlib.sha1(seed_store(args, work).read_bytes()).hexdigest()[:8]
    return f"reid_{structure}_{rows}x{args.dim}.h5"


def make_store(path: Path, rows: int, dim: int, gen: Any) -> None:
    """Write the store batch by batch through StoreWriter (bounded memory), unless a complete one is cached."""
    from mdpr.store import FeatureStore, StoreMeta, StoreWriter

    if path.exists():
        with FeatureStore.open(path) as store:
            if len(store) == rows and store.dim == dim and not store.has_pending_journal:
                return
        path.unlink()
    meta = StoreMeta(dim=dim, dtype="float16", fingerprint="bench", normalized=True)
    step = 1 << 16
    with StoreWriter(path, meta, checkpoint_interval=1e9) as writer:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            ids = gen.pids(start, stop)
            writer.add(gen.rows(start, stop), [f"{ids[i - start]:07d}/{i:09d}.jpg" for i in range(start, stop)],
                       pids=ids.tolist(), camids=(np.arange(start, stop) % CAMERAS).tolist())


def build_in_child(store: Path, kind: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Build the index in a child process; its result plus the child's peak RSS."""
    code = (
        "import json, resource, sys; from mdpr.workflows.index import build_index; "
        f"r = build_index({str(store)!r}, {kind!r}, **{extra!r}); "
        "out = r.to_json(); out['peak_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; "
        "print(json.dumps(out))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"index build failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fresh(path: Path) -> bool:
    from mdpr.search import read_index_meta
    from mdpr.search.index import freshness
    from mdpr.store import FeatureStore

    with FeatureStore.open(path) as store:
        meta = read_index_meta(store)
        return meta is not None and freshness(store, meta)[0] == "fresh"


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(np.intersect1d(f[:k], t[:k])) / k for f, t in zip(found, truth)]))


def bench(args: argparse.Namespace, work: Path, part: str) -> Dict[str, Any]:
    from mdpr.search import GalleryIndex, open_index, search
    from mdpr.store import FeatureStore

    rows = args.rows if part == "memory" else args.big_rows
    gen = generator(args, work, rows)
    path = work / store_name(args, work, rows)
    t0 = time.perf_counter()
    make_store(path, rows, args.dim, gen)
    made = time.perf_counter() - t0
    target = (args.recall_memory if part == "memory" else args.recall_disk) or None  # 0: tune to 0.95 if reachable
    extra: Dict[str, Any] = {"recall": target, **({"threads": args.threads} if args.threads else {}),
                             **({"nbits": args.nbits} if args.nbits else {})}
    sidecar = path.with_name(path.name + ".bench-build.json")  # the build's result, for --reuse
    built = json.loads(sidecar.read_text()) if args.reuse and sidecar.exists() and _fresh(path) else None
    if (built is None or built.get("recall", {}).get("target") != (target or 0.95)
            or (args.nbits and built.get("params", {}).get("nbits") != args.nbits)):
        built = build_in_child(path, args.kind, extra)
        sidecar.write_text(json.dumps(built))
    probes = gen.probes(args.probes, rows)
    out: Dict[str, Any] = {"part": part, "structure": args.structure, "rows": rows, "dim": args.dim, "store_seconds": round(made, 1),
                           **({"seed": gen.describe()} if isinstance(gen, DemoReplicas) else {}),
                           "kind": built["kind"], "reason": built["reason"], "build_seconds": built["seconds"],
                           "build_peak_rss_gb": round(built["peak_rss_bytes"] / 1e9, 2),
                           "index_memory_gb": round(built["memory_bytes"] / 1e9, 3),
                           "build_recall": built["recall"], "settings": built["settings"], "params": built["params"]}
    with FeatureStore.open(path) as store:
        index, note = open_index(store, "auto")
        out["note"] = note
        exact_gallery: Any = GalleryIndex.from_store(store) if part == "memory" else store
        truth = search(exact_gallery, probes, top_k=10).indices
        found = index.search(probes, top_k=10).indices
        out["probe_recall_at_10"] = round(recall_at(found, truth, 10), 4)
        one = [probes[i : i + 1] for i in range(len(probes))]
        counter = {"index": 0, "exact": 0}

        def by_index() -> None:
            index.search(one[counter["index"] % len(one)], top_k=10)
            counter["index"] += 1

        def by_exact() -> None:
            search(exact_gallery, one[counter["exact"] % len(one)], top_k=10)
            counter["exact"] += 1

        # The index is timed on many probes per exact probe (its latency is ~100x smaller): rounds of
        # `ratio` index probes and one exact probe, interleaved.
        batch = max(1, args.batch)

        def index_batch() -> None:
            for _ in range(batch):
                by_index()

        times = interleaved({"index": index_batch, "exact": by_exact}, repeats=args.repeats)
        out["index_ms_per_probe"] = round(1000 * med(times["index"]) / batch, 3)
        out["exact_ms_per_probe"] = round(1000 * med(times["exact"]), 2)
        out["speedup"] = round(out["exact_ms_per_probe"] / out["index_ms_per_probe"], 1)
        out["exact_in"] = "memory (float32 GalleryIndex)" if part == "memory" else "the store on disk (float16)"
    out["process_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="memory,disk", help="memory (1M in memory), disk (5M on disk)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=5_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--structure", default="appearance", choices=STRUCTURES,
                        help="appearance: tracklets of identities that gather in appearance groups (default); "
                        "tracklets: walks of near-duplicate frames, identities spread uniformly; "
                        "crops: independent views, identities spread uniformly (hardest); "
                        "demo: features extracted by a trained model (--seed-store), replicated with noise")
    parser.add_argument("--seed-store", type=Path, default=None,
                        help="the demo structure's extracted features (default: run mdpr demo in --work)")
    parser.add_argument("--probes", type=int, default=200, help="probes for recall and latency")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=20, help="index probes per timing round")
    parser.add_argument("--threads", type=int, default=None, help="faiss threads for the build")
    parser.add_argument("--nbits", type=int, default=None, help="IVF-PQ code bits (default: the build's, 4)")
    parser.add_argument("--recall-memory", type=float, default=0.95, help="recall@10 target of the 1M build")
    parser.add_argument("--recall-disk", type=float, default=0.90, help="recall@10 target of the 5M build")
    parser.add_argument("--reuse", action="store_true", help="reuse a fresh index built by an earlier run")
    parser.add_argument("--work", type=Path, default=None, help="folder for the stores (cached between runs)")
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.big_rows, args.dim, args.probes, args.repeats, args.batch = 20_000, 30_000, 64, 40, 3, 5
        args.recall_memory = args.recall_disk = 0.0  # small stores: the default tuning, never an unreachable target
        args.kind = "ivfpq" if args.kind == "auto" else args.kind  # auto keeps exact search below 1M rows
    work = args.work or Path(tempfile.mkdtemp(prefix="mdpr-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores, load {load()}", "python": platform.python_version(),
               "parts": [bench(args, work, part) for part in args.parts.split(",") if part]}
    results["load_after"] = load()
    if args.json:
        print(json.dumps(results))
        return
    print(results["machine"])
    for r in results["parts"]:
        print(f"\n{r['part']}: {r['rows']:,} x {r['dim']} ({r['structure']}), {r['kind']} ({r['reason']})")
        print(f"  build {r['build_seconds']:.1f} s, peak RSS {r['build_peak_rss_gb']} GB, index memory "
              f"{r['index_memory_gb']} GB, settings {r['settings']}")
        print(f"  recall@10 on new probes {r['probe_recall_at_10']}, measured at build {r['build_recall']}")
        print(f"  per probe: index {r['index_ms_per_probe']} ms, exact in {r['exact_in']} {r['exact_ms_per_probe']} ms "
              f"= {r['speedup']}x")
    print(f"\nload after: {results['load_after']}")


if __name__ == "__main__":
    main()
