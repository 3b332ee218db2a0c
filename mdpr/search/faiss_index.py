"""faiss indexes beside a feature store: choose, build (sharded, bounded memory, atomic), measure, tune, update, load.

Vectors given to faiss: for ``cosine`` the L2-normalised features (the ranking of ``||q - g||`` between unit
vectors is the cosine ranking), for ``euclidean`` the features as stored; faiss always works with L2
distances. faiss only proposes a shortlist: :class:`FaissIndex` recomputes its distances exactly from the
store (:func:`mdpr.search.exact.rescore`), so the distances returned are the exact ones and recall is the
only thing an index can lose, which the build measures.

A build trains on a sample of rows, then adds the rows chunk by chunk from the memory-mapped store, shard by
shard (consecutive row ranges), writing each shard with :func:`mdpr.fileio.atomic_path`; ``index.json``
is written last, atomically, so a build killed at any point leaves the previous index (or none), never a
part of one. A lock file keeps two builds of one store from running at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mdpr import __version__
from mdpr.errors import MdprError
from mdpr.fileio import atomic_path, atomic_write_json
from mdpr.runtime import choose_cpu_threads, l2_normalize
from mdpr.search.exact import (
    METRICS,
    SINGLE_THREAD_MAX_PROBES,
    SearchResult,
    _rerank,
    as_probes,
    check_top_k,
    rescore,
    search,
)
from mdpr.search.index import (
    FAISS_KINDS,
    KIND_NAMES,
    META_NAME,
    Index,
    IndexMeta,
    check_rows,
    freshness,
    index_dir_for,
    read_index_meta,
    rebuild_command,
    row_checksums,
    store_stamp,
)
from mdpr.store import FeatureStore

#: Below this many rows ``kind="auto"`` keeps exact search (a scan of a million 512-d rows takes about 0.3 s).
AUTO_MIN_ROWS = 1_000_000
#: Rows of the store used as queries to measure recall (their own row excluded from the neighbours).
RECALL_QUERIES = 200
#: Recall@10 that the search settings are tuned to when no target is given.
DEFAULT_RECALL = 0.95
#: Candidates proposed per probe before exact rescoring (at least twice top_k).
SHORTLIST = 100
#: HNSW's candidates: twice top_k (0). Its graph ranks them by exact float32 distances already, and faiss
#: searches with at least as large an ``ef`` as the candidates asked for, so a long shortlist would only
#: make every probe as slow as a large ``ef``.
HNSW_SHORTLIST = 0
#: ``ef`` values tried when tuning an HNSW index (steps of 1.5x: ef sets the latency almost linearly).
HNSW_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
#: Shortlists tried when tuning an IVF-PQ index (its PQ distances only rank approximately).
SHORTLISTS = (100, 200, 400, 800, 1600)
#: Tuning leaves a group of settings when a step of the setting gains less recall@10 than this.
PLATEAU = 0.003
#: Rows handed to faiss per ``add`` call (with the float32 copy: bounded memory whatever the store's size).
ADD_ROWS = 1 << 15
#: Rows per coarse cluster used to train IVF (faiss warns below 39).
TRAIN_PER_LIST = 40
#: Above this many lists the coarse quantizer is an HNSW graph over the centroids (fast assignment); up to
#: it, an exact (flat) one, whose assignment of every row to its nearest list is exact.
FLAT_QUANTIZER_MAX_LISTS = 4096
#: Search and construction beam of an HNSW coarse quantizer.
HNSW_QUANTIZER_EF = 128
#: PQ code bits that faiss scans with SIMD lookup tables (IndexIVFPQFastScan); the CPU default
FAST_SCAN_BITS = 4
#: code bits on a GPU, whose IVF-PQ has no fast-scan layout
GPU_BITS = 8
RECALL_KS = (1, 10, 100)

Stage = Callable[[str, int, int], None]


def import_faiss() -> Any:
    """The faiss module, or one sentence naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise MdprError('A faiss index needs the faiss library, which is not installed; install it with '
                        'pip install "mdpr[faiss]", or search exactly (index "exact").') from None
    return faiss


def _total_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def default_params(kind: str, rows: int, dim: int, gpu: bool = False) -> Dict[str, Any]:
    """Build settings for ``kind`` that suit ``rows`` x ``dim`` (see ``docs/feature-store.md``).

    IVF-PQ codes are 4-bit on the CPU: faiss scans them with SIMD lookup tables (fast scan), several times
    faster than 8-bit codes (docs/benchmarks.md), and the coarser codes cost no recall once the shortlist
    is rescored exactly.
    """
    if kind == "hnsw":
        # a larger construction beam than faiss's 40: galleries are tight clusters (one person's crops), and
        # with a narrow beam the graph links too few clusters together for probes to reach them
        return {"hnsw_m": 32, "ef_construction": 100}
    if kind == "ivfpq":
        nlist = 2 ** round(math.log2(max(1.0, math.sqrt(rows))))
        nlist = int(max(1, min(nlist, 65536, rows // TRAIN_PER_LIST or 1)))
        m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0 and (dim // d >= 2 or dim == 1))
        most = GPU_BITS if gpu else FAST_SCAN_BITS
        nbits = int(max(1, min(most, math.floor(math.log2(max(2, rows // TRAIN_PER_LIST))))))
        return {"nlist": nlist, "m": m, "nbits": nbits}
    return {}


def code_bytes(params: Dict[str, Any]) -> int:
    """Bytes of one row's IVF-PQ code: ``m`` sub-vector codes of ``nbits`` bits."""
    return math.ceil(int(params["m"]) * int(params["nbits"]) / 8)


def estimate_memory(kind: str, rows: int, dim: int, params: Dict[str, Any]) -> int:
    """Bytes an index of this kind takes in memory (about its file size)."""
    if kind == "flat":
        return rows * dim * 4
    if kind == "hnsw":
        return rows * (dim * 4 + 2 * int(params["hnsw_m"]) * 4 + 8)
    if kind == "ivfpq":
        return rows * (code_bytes(params) + 8) + int(params["nlist"]) * dim * 4
    return 0


def choose_kind(rows: int, dim: int, memory_bytes: Optional[int] = None) -> Tuple[str, str]:
    """``(kind, reason)`` for ``kind="auto"``: exact below :data:`AUTO_MIN_ROWS` rows, IVF-PQ above.

    IVF-PQ rather than HNSW: a gallery indexed from camera tracks holds runs of near-duplicate frames, on
    which HNSW's graph pruning leaves neighbours unreachable whatever ``ef``, while IVF-PQ with exact
    rescoring keeps its recall in a small fraction of the memory (docs/benchmarks.md). ``memory_bytes``
    only words the reason.
    """
    size = f"{rows:,} rows x {dim}"
    if rows < AUTO_MIN_ROWS:
        return "exact", (f"{size}: exact search scans {_gb(rows * dim * 2)} (float16) per batch of probes, fast "
                         f"enough below about {AUTO_MIN_ROWS:,} rows, so no index is needed")
    total = memory_bytes or _total_memory()
    params = default_params("ivfpq", rows, dim)
    ivf = estimate_memory("ivfpq", rows, dim, params)
    hnsw = estimate_memory("hnsw", rows, dim, default_params("hnsw", rows, dim))
    return "ivfpq", (f"{size}: IVF-PQ with {params['nlist']} lists and {code_bytes(params)}-byte codes ({_gb(ivf)} of this "
                     f"machine's {_gb(total)}), whose shortlists are rescored exactly from the store; it keeps "
                     f"its recall on galleries of near-duplicate frames, where HNSW ({_gb(hnsw)}, kind hnsw) "
                     f"loses neighbours")


def check_params(kind: str, rows: int, dim: int, params: Dict[str, Any], gpu: bool = False) -> Dict[str, Any]:
    """Defaults filled in and every setting checked (one sentence naming the argument when impossible)."""
    out = {**default_params(kind, rows, dim, gpu), **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(out) - set(default_params(kind, rows, dim)))
    if unknown:
        raise MdprError(f"{', '.join(unknown)} do(es) not apply to a {KIND_NAMES[kind]} index; leave it out.")
    if kind == "ivfpq":
        nlist, m, nbits = int(out["nlist"]), int(out["m"]), int(out["nbits"])
        if not 1 <= nlist <= rows:
            raise MdprError(f"nlist {nlist} must be between 1 and the store's {rows} rows; the default for this store "
                            f"is {default_params(kind, rows, dim)['nlist']}.", keys=("nlist",))
        if m < 1 or dim % m:
            raise MdprError(f"m {m} (PQ sub-vectors) must divide the feature size {dim}; for example "
                            f"{default_params(kind, rows, dim)['m']}.", keys=("m",))
        if not 1 <= nbits <= 16:
            raise MdprError(f"nbits {nbits} must be between 1 and 16 (4, the default, is scanned fastest).",
                            keys=("nbits",))
        if 2 ** nbits > rows:
            raise MdprError(f"nbits {nbits} needs at least {2 ** nbits} rows to train on, more than the store's {rows}; "
                            f"the most for this store is {int(math.log2(rows))}.", keys=("nbits",))
    if kind == "hnsw":
        if int(out["hnsw_m"]) < 2:
            raise MdprError(f"hnsw_m {out['hnsw_m']} must be at least 2 (32 is usual).", keys=("hnsw_m",))
        if int(out["ef_construction"]) < 1:
            raise MdprError(f"ef_construction {out['ef_construction']} must be at least 1 (100 is the default).",
                           keys=("ef_construction",))
    return {k: int(v) for k, v in out.items()}


def _vectors(block: np.ndarray, metric: str) -> np.ndarray:
    """What faiss sees of a block of rows: unit float32 vectors for cosine, float32 rows for euclidean."""
    x = np.array(block, dtype=np.float32, copy=True)
    return l2_normalize(x, inplace=True) if metric == "cosine" else x


def _sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if count >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)


def _blocks(store: FeatureStore, start: int, stop: int) -> Iterator[Tuple[int, np.ndarray]]:
    """Rows [start, stop) of the store as ``(row, block)`` pieces of at most :data:`ADD_ROWS` rows."""
    for first, block in store.scan():
        last = first + block.shape[0]
        if last <= start:
            continue
        if first >= stop:
            break
        lo, hi = max(first, start), min(last, stop)
        for off in range(lo, hi, ADD_ROWS):
            yield off, block[off - first : min(hi, off + ADD_ROWS) - first]


def shard_ranges(rows: int, shards: int) -> List[Tuple[int, int]]:
    """``shards`` consecutive row ranges covering ``rows`` rows, as even as possible."""
    bounds = [round(i * rows / shards) for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


class _GpuBuild:
    """Runs ``train`` / ``add`` on a GPU copy when asked (faiss with GPU support), else on the CPU."""

    def __init__(self, faiss: Any, gpu: bool, kind: str) -> None:
        self.faiss = faiss
        self.res: Any = None
        if not gpu:
            return
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            raise MdprError("gpu=True needs faiss with GPU support (the faiss-gpu package) and a CUDA device, and this "
                            "faiss has none; build on the CPU (leave gpu out).", keys=("gpu=True", "gpu"))
        if kind == "hnsw":
            raise MdprError("faiss builds HNSW indexes on the CPU only; leave gpu out, or choose kind ivfpq or flat.",
                            keys=("gpu", "kind"))
        self.res = faiss.StandardGpuResources()

    def to_device(self, index: Any) -> Any:
        return index if self.res is None else self.faiss.index_cpu_to_gpu(self.res, 0, index)

    def to_host(self, index: Any) -> Any:
        return index if self.res is None else self.faiss.index_gpu_to_cpu(index)


def _new_index(faiss: Any, kind: str, dim: int, params: Dict[str, Any], gpu: bool = False) -> Any:
    if kind == "flat":
        return faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"])
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    nlist = params["nlist"]
    flat = gpu or nlist <= FLAT_QUANTIZER_MAX_LISTS  # faiss moves only flat quantizers to a GPU
    quantizer = faiss.IndexFlatL2(dim) if flat else faiss.IndexHNSWFlat(dim, 32)
    if not flat:
        # faiss's default beam (16) misplaces rows of a clustered gallery into lists that their probes never
        # visit, which no nprobe recovers; a wider beam costs little next to the lists' scan
        quantizer.hnsw.efConstruction = HNSW_QUANTIZER_EF
        quantizer.hnsw.efSearch = HNSW_QUANTIZER_EF
    if params["nbits"] == FAST_SCAN_BITS and not gpu:
        # codes laid out in blocks for SIMD table lookups; distances to the list centres are not subtracted
        # first (no residuals), so a probe builds one lookup table instead of one per list it visits
        index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, params["m"], FAST_SCAN_BITS)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, params["m"], params["nbits"])
    index.own_fields = True  # the quantizer's lifetime is the index's (Python would otherwise free it)
    quantizer.this.disown()
    index.cp.niter = 10  # k-means iterations: 10 instead of 25 trains 2.5x faster for the same recall after rescoring
    index.pq.cp.niter = 10
    return index


@contextlib.contextmanager
def faiss_threads(n: Optional[int]) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads (None: unchanged), restoring the previous count."""
    faiss = import_faiss()
    previous = faiss.omp_get_max_threads()
    if n is not None and n != previous:
        faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None and n != previous:
            faiss.omp_set_num_threads(previous)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """One build (or update) of a store's index at a time; the kernel releases the lock if the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds are not expected to overlap there
        yield
        return
    fh = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MdprError(f"Another process is building or updating the index {folder}; wait for it to finish.") from None
        yield
    finally:
        fh.close()


def _clean(folder: Path, keep: Sequence[str]) -> None:
    """Remove what an interrupted or superseded build left: temporary files and unreferenced shard files."""
    for p in folder.iterdir():
        stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
        if stale_tmp or (p.suffix == ".faiss" and p.name not in keep):
            with contextlib.suppress(OSError):
                p.unlink()


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def build_index(
    store: FeatureStore,
    kind: str = "auto",
    metric: str = "cosine",
    *,
    recall: Optional[float] = None,
    nlist: Optional[int] = None,
    m: Optional[int] = None,
    nbits: Optional[int] = None,
    hnsw_m: Optional[int] = None,
    ef_construction: Optional[int] = None,
    shards: int = 1,
    gpu: bool = False,
    queries: int = RECALL_QUERIES,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: Optional[Stage] = None,
) -> Optional[IndexMeta]:
    """Build the index of ``store`` in ``<store>.index/`` and return its metadata (None when ``kind="auto"``
    chooses exact search: nothing is written).

    ``recall``: tune the search setting (nprobe / ef) to the smallest value whose measured recall@10 reaches
    it; :class:`MdprError` with the best reachable value when none does (nothing is replaced). ``shards``:
    that many shard indexes over consecutive row ranges. ``threads``: faiss threads (default: one per core,
    one when the machine is busy; :func:`mdpr.runtime.choose_cpu_threads`). ``progress(stage, done, total)``
    with stages ``train``, ``add``, ``recall``.
    """
    started = time.perf_counter()
    rows, dim = len(store), store.dim
    if metric not in METRICS:
        raise MdprError(f"Unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
    if kind == "auto":
        kind, reason = choose_kind(rows, dim)
        if kind == "exact":
            return None
    elif kind in FAISS_KINDS:
        reason = f"kind {kind} was asked for"
    else:
        raise MdprError(f"Unknown index kind '{kind}'; use auto, {', '.join(FAISS_KINDS)}.", keys=("kind",))
    if rows == 0:
        raise MdprError(f"Feature store {store.path} is empty; add rows with `mdpr extract` before building an index.")
    if not 1 <= int(shards) <= rows:
        raise MdprError(f"shards {shards} must be between 1 and the store's {rows} rows.", keys=("shards",))
    if recall is not None and not 0.0 < float(recall) <= 1.0:
        raise MdprError(f"recall {recall} must be a fraction in (0, 1], for example 0.95.", keys=("recall",))
    params = check_params(kind, rows, dim, {"nlist": nlist, "m": m, "nbits": nbits, "hnsw_m": hnsw_m,
                                            "ef_construction": ef_construction}, gpu=gpu)
    faiss = import_faiss()
    device = _GpuBuild(faiss, gpu, kind)
    report = progress or (lambda stage, done, total: None)
    folder = index_dir_for(store.path)
    with _build_lock(folder), faiss_threads(choose_cpu_threads(threads)[0]):
        try:
            previous = read_index_meta(folder)
        except MdprError:  # an unreadable earlier index is simply replaced
            previous = None
        _clean(folder, [s["file"] for s in previous.shards] if previous else [])
        template = _new_index(faiss, kind, dim, params, gpu=device.res is not None)
        if kind == "ivfpq":
            sample = _sample_rows(rows, max(TRAIN_PER_LIST * params["nlist"], TRAIN_PER_LIST * 2 ** params["nbits"]),
                                  seed)
            report("train", 0, len(sample))
            train = device.to_device(template)
            train.train(_vectors(store.read_features(dtype=np.float32, rows=sample.tolist()), metric))
            template = device.to_host(train)
            report("train", len(sample), len(sample))
        build_id = uuid.uuid4().hex[:10]
        shard_info: List[Dict[str, Any]] = []
        for s, (start, stop) in enumerate(shard_ranges(rows, int(shards))):
            index = device.to_device(faiss.clone_index(template))
            for off, block in _blocks(store, start, stop):
                index.add(_vectors(block, metric))
                report("add", off + block.shape[0], rows)
            name = f"{build_id}.{s}.faiss"
            with atomic_path(folder / name) as tmp:
                faiss.write_index(device.to_host(index), str(tmp))
            del index
            shard_info.append({"file": name, "start": start, "stop": stop, "bytes": (folder / name).stat().st_size})
        meta = IndexMeta(
            kind=kind, metric=metric, rows=rows, dim=dim, normalized=bool(store.normalized),
            fingerprint=store.fingerprint, stamp=store_stamp(store), checks=row_checksums(store, check_rows(rows)),
            params=params, search={}, shards=shard_info, reason=reason,
            memory_bytes=sum(int(s["bytes"]) for s in shard_info), mdpr_version=__version__,
        )
        try:
            index = FaissIndex.load(store, folder, meta)
            meta.search, meta.recall = tune(index, recall, queries=queries, seed=seed, progress=report)
        except BaseException:
            _clean(folder, [s["file"] for s in previous.shards] if previous else [])
            raise
        meta.built = _now()
        meta.build_seconds = round(time.perf_counter() - started, 3)
        atomic_write_json(folder / META_NAME, meta.to_json())
        _clean(folder, [s["file"] for s in shard_info])
    return meta


def update_index(store: FeatureStore, progress: Optional[Stage] = None) -> IndexMeta:
    """Add the rows appended to ``store`` since its index was built (the last shard grows), atomically.

    A fresh index is returned unchanged; an index whose rows are not an unchanged prefix of the store (the
    store was rewritten or re-extracted) is refused as stale with the rebuild command. Recall is measured
    again with the index's search settings.
    """
    folder = index_dir_for(store.path)
    meta = read_index_meta(folder)
    if meta is None:
        raise MdprError(f"The store {store.path} has no index to update; build one with "
                        f"`mdpr index build --gallery {store.path}`.")
    faiss = import_faiss()
    report = progress or (lambda stage, done, total: None)
    with _build_lock(folder), faiss_threads(choose_cpu_threads(None)[0]):
        state, sentence = freshness(store, meta)
        if state == "fresh":
            return meta
        if state != "appended":
            raise MdprError(sentence)
        started = time.perf_counter()
        rows = len(store)
        last = meta.shards[-1]
        index = faiss.read_index(str(folder / last["file"]))
        for off, block in _blocks(store, meta.rows, rows):
            index.add(_vectors(block, meta.metric))
            report("add", off + block.shape[0] - meta.rows, rows - meta.rows)
        name = f"{uuid.uuid4().hex[:10]}.{len(meta.shards) - 1}.faiss"
        with atomic_path(folder / name) as tmp:
            faiss.write_index(index, str(tmp))
        del index
        shards = [*meta.shards[:-1], {"file": name, "start": last["start"], "stop": rows,
                                      "bytes": (folder / name).stat().st_size}]
        new = IndexMeta(**{**meta.to_json(), "rows": rows, "stamp": store_stamp(store), "shards": shards,
                           "checks": row_checksums(store, check_rows(rows)),
                           "memory_bytes": sum(int(s["bytes"]) for s in shards)})
        try:
            loaded = FaissIndex.load(store, folder, new)
            new.recall = measure_recall(loaded, queries=int(meta.recall.get("queries", RECALL_QUERIES)),
                                        progress=report)
        except BaseException:
            _clean(folder, [s["file"] for s in meta.shards])
            raise
        new.built = _now()
        new.build_seconds = round(float(meta.build_seconds) + time.perf_counter() - started, 3)
        atomic_write_json(folder / META_NAME, new.to_json())
        _clean(folder, [s["file"] for s in shards])
    return new


class FaissIndex(Index):
    """A faiss index of a store (one shard or several served together), with exactly rescored shortlists."""

    def __init__(self, store: FeatureStore, meta: IndexMeta, shards: List[Any], folder: Path) -> None:
        self.store = store
        self.meta = meta
        self.kind = meta.kind
        self.metric = meta.metric
        self.folder = folder
        self.shard_indexes = shards  # kept referenced: IndexShards does not own them
        faiss = import_faiss()
        if len(shards) == 1:
            self.faiss_index = shards[0]
        else:
            self.faiss_index = faiss.IndexShards(meta.dim, False, True)  # successive ids: row numbers
            for shard in shards:
                self.faiss_index.add_shard(shard)
        self.settings: Dict[str, int] = {}
        self.shortlist = int(meta.search.get("shortlist", HNSW_SHORTLIST if meta.kind == "hnsw" else SHORTLIST))
        self.configure(**{k: v for k, v in meta.search.items() if k in ("nprobe", "ef")})

    @classmethod
    def load(cls, store: FeatureStore, folder: Path, meta: IndexMeta, nprobe: Optional[int] = None,
             ef: Optional[int] = None) -> FaissIndex:
        """Read the shard files named by ``meta`` (fresh for ``store``: see :func:`mdpr.search.index.open_index`)."""
        faiss = import_faiss()
        shards = []
        for s in meta.shards:
            path = folder / s["file"]
            if not path.is_file():
                raise MdprError(f"Index file {path} is missing; rebuild the index with {rebuild_command(store, meta)}.")
            shards.append(faiss.read_index(str(path)))
        index = cls(store, meta, shards, folder)
        if nprobe is not None or ef is not None:
            index.configure(nprobe=nprobe, ef=ef)
        return index

    @property
    def nlist(self) -> int:
        return int(self.meta.params.get("nlist", 0))

    def configure(self, nprobe: Optional[int] = None, ef: Optional[int] = None) -> None:
        """Set the search effort: ``nprobe`` lists visited (IVF-PQ), ``ef`` candidates explored (HNSW)."""
        if nprobe is not None:
            if self.kind != "ivfpq":
                raise MdprError(f"nprobe applies to IVF-PQ indexes, and {self.folder} is {KIND_NAMES[self.kind]}"
                                + ("; use ef." if self.kind == "hnsw" else "; leave nprobe out."))
            nprobe = int(nprobe)
            if not 1 <= nprobe <= self.nlist:
                raise MdprError(f"nprobe {nprobe} must be between 1 and the index's {self.nlist} lists; the most is "
                                f"{self.nlist}.", keys=("nprobe",))
            for shard in self.shard_indexes:
                shard.nprobe = nprobe
            self.settings["nprobe"] = nprobe
        if ef is not None:
            if self.kind != "hnsw":
                raise MdprError(f"ef applies to HNSW indexes, and {self.folder} is {KIND_NAMES[self.kind]}"
                                + ("; use nprobe." if self.kind == "ivfpq" else "; leave ef out."))
            ef = int(ef)
            if ef < 1:
                raise MdprError(f"ef {ef} must be at least 1 (larger finds more true neighbours, more slowly).", keys=("ef",))
            for shard in self.shard_indexes:
                shard.hnsw.efSearch = ef
            self.settings["ef"] = ef

    def candidates(self, probes: np.ndarray, count: int) -> np.ndarray:
        """(Q, count) row numbers that faiss proposes (-1 where it finds fewer)."""
        # a few probes: one thread (OpenMP's barriers cost more than they save, worst on a busy machine)
        with faiss_threads(1 if probes.shape[0] <= SINGLE_THREAD_MAX_PROBES else None):
            _, ids = self.faiss_index.search(_vectors(probes, self.metric), int(count))
        return np.asarray(ids, dtype=np.int64)

    def search(
        self,
        probes: Any,
        top_k: int = 10,
        *,
        rerank: bool = False,
        rerank_pool: int = 100,
        shortlist: Optional[int] = None,
        progress: Optional[Any] = None,
    ) -> SearchResult:
        q = as_probes(probes, self.store.dim)
        top_k = check_top_k(top_k)
        n = len(self.store)
        pool = min(n, max(top_k, int(rerank_pool)) if rerank else top_k)
        if n == 0 or q.shape[0] == 0:
            return SearchResult(np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32))
        count = min(n, max(pool, int(shortlist or self.shortlist), 2 * pool))
        found = rescore(self.store, q, self.candidates(q, count), pool, self.metric)
        indices = np.full((q.shape[0], pool), -1, np.int64)
        distances = np.full((q.shape[0], pool), np.inf, np.float32)
        indices[:, : found.indices.shape[1]] = found.indices
        distances[:, : found.indices.shape[1]] = found.distances
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:
            # faiss proposed fewer candidates than asked (an IVF probe of nearly empty lists): those probes are
            # answered exactly, so a search never returns fewer rows than the store has to give
            exact = search(self.store, q[short], top_k=pool, metric=self.metric)
            indices[short], distances[short] = exact.indices, exact.distances
        result = SearchResult(indices, distances)
        if progress is not None:
            progress(n, n)
        if rerank:
            return SearchResult(*_rerank(self.store, q, result.indices, self.metric, min(top_k, n)))
        return result

    def describe(self) -> str:
        built = self.meta.built.replace("T", " ").replace("+00:00", " UTC") if self.meta.built else "earlier"
        at10 = self.meta.recall.get("at_10")
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        shards = f", {len(self.shard_indexes)} shards" if len(self.shard_indexes) > 1 else ""
        recall = f"measured recall@10 {at10:.3f}" if isinstance(at10, (int, float)) else "recall not measured"
        return (f"{KIND_NAMES[self.kind]} index built {built} ({self.meta.rows} rows, {recall}"
                + (f", {settings}" if settings else "") + f"{shards}; distances recomputed exactly)")


def _recall_queries(index: FaissIndex, queries: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample rows as queries, their features, and their exact neighbours (their own row excluded)."""
    store = index.store
    n = len(store)
    rows = _sample_rows(n, min(int(queries), n), seed + 1)
    feats = store.read_features(dtype=np.float32, rows=rows.tolist())
    k = min(n, max(RECALL_KS) + 1)
    exact = search(store, feats, top_k=k, metric=index.metric).indices
    return rows, feats, exact


def _without_self(ids: np.ndarray, rows: np.ndarray, k: int) -> List[np.ndarray]:
    return [r[(r != row) & (r >= 0)][:k] for r, row in zip(ids, rows)]


def _recall_at(index: FaissIndex, rows: np.ndarray, feats: np.ndarray, exact: np.ndarray,
               ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    out: Dict[str, float] = {}
    n = len(index.store)
    for k in ks:
        k_eff = min(k, n - 1)
        if k_eff < 1:
            out[f"at_{k}"] = 1.0
            continue
        truth = _without_self(exact, rows, k_eff)
        found = _without_self(index.search(feats, top_k=min(n, k_eff + 1)).indices, rows, k_eff)
        hits = sum(len(np.intersect1d(t, f)) for t, f in zip(truth, found))
        out[f"at_{k}"] = round(hits / float(sum(len(t) for t in truth) or 1), 4)
    return out


def measure_recall(index: FaissIndex, queries: int = RECALL_QUERIES, seed: int = 0,
                   progress: Optional[Stage] = None) -> Dict[str, Any]:
    """Recall@1/10/100 of ``index`` against exact search, with ``queries`` of the store's rows as probes."""
    report = progress or (lambda stage, done, total: None)
    report("recall", 0, 1)
    rows, feats, exact = _recall_queries(index, queries, seed)
    out: Dict[str, Any] = {**_recall_at(index, rows, feats, exact), "queries": int(rows.size),
                           "settings": dict(index.settings)}
    report("recall", 1, 1)
    return out


def _nprobes(index: FaissIndex) -> List[int]:
    """1, 2, 3, 4, 6, 8, 12, ... up to every list: steps of about 1.5x (the latency grows with nprobe)."""
    steps = {index.nlist}
    for i in range(int(math.log2(max(1, index.nlist))) + 1):
        steps.update({2 ** i, 3 * 2 ** i // 2} if i else {1})
    return sorted(n for n in steps if 1 <= n <= index.nlist)


def _ladder(index: FaissIndex) -> List[List[Dict[str, int]]]:
    """Search settings to try, cheapest first, in groups: within a group only the faiss setting grows; a group
    is left early once a step of the setting stops paying (the shortlist is then what limits recall)."""
    if index.kind == "ivfpq":
        # PQ distances are approximate: past a few lists, recall is limited by how many candidates are rescored
        return [[{"nprobe": n, "shortlist": sl} for n in _nprobes(index)] for sl in SHORTLISTS]
    if index.kind == "hnsw":
        return [[{"ef": ef, "shortlist": HNSW_SHORTLIST} for ef in HNSW_EFS]]
    return [[{"shortlist": SHORTLIST}]]


def _apply(index: FaissIndex, step: Dict[str, int]) -> None:
    index.shortlist = int(step.get("shortlist", SHORTLIST))
    index.configure(**{k: v for k, v in step.items() if k != "shortlist"})


def tune(index: FaissIndex, recall: Optional[float], queries: int = RECALL_QUERIES, seed: int = 0,
         progress: Optional[Stage] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(search settings, measured recall)``: the fastest nprobe / ef and shortlist whose recall@10 reaches
    ``recall`` (default :data:`DEFAULT_RECALL`, then the best setting when none reaches it; an explicit target
    that no setting reaches is refused with the best reachable value).

    Each group of the ladder (one shortlist length) climbs until it reaches the target; the groups are then
    compared by the time their sample search took, since a longer shortlist at a small nprobe can beat a
    short one that must scan many lists. A group is left once it is slower than the fastest setting found.
    """
    report = progress or (lambda stage, done, total: None)
    target = DEFAULT_RECALL if recall is None else float(recall)
    rows, feats, exact = _recall_queries(index, queries, seed)
    groups = _ladder(index)
    best: Optional[Tuple[float, Dict[str, int]]] = None  # the highest recall, for when nothing reaches the target
    fastest: Optional[Tuple[float, float, Dict[str, int]]] = None  # (seconds, recall, step) reaching the target
    for g, group in enumerate(groups):
        report("recall", g, len(groups))
        previous = -1.0
        for step in group:
            _apply(index, step)
            started = time.perf_counter()
            at10 = _recall_at(index, rows, feats, exact, ks=(10,))["at_10"]
            seconds = time.perf_counter() - started
            if best is None or at10 > best[0]:
                best = (at10, step)
            if at10 >= target:
                if fastest is None or seconds < fastest[0]:
                    fastest = (seconds, at10, step)
                break
            if fastest is not None and seconds > fastest[0]:
                break
            if at10 - previous < PLATEAU:
                break
            previous = at10
    if fastest is not None:
        best = (fastest[1], fastest[2])
    assert best is not None
    report("recall", len(groups), len(groups))
    at10, step = best
    if recall is not None and at10 < target:
        knob = ", ".join(f"{k} {v}" for k, v in step.items())
        more = {"ivfpq": " or build with more lists or longer codes (nlist, m)", "hnsw": " or build with a larger "
                "hnsw_m / ef_construction"}.get(index.kind, "")
        raise MdprError(f"The recall target {target:g} is not reachable with this index: the best measured recall@10 "
                        f"is {at10:.3f} ({knob}); ask for at most {at10:.3f}{more}.", keys=("nlist", "m", "hnsw_m",
                                                                                         "ef_construction"))
    _apply(index, step)
    measured = _recall_at(index, rows, feats, exact)
    settings: Dict[str, Any] = dict(step)
    return settings, {**measured, "queries": int(rows.size), "target": target,
                      "settings": {k: v for k, v in step.items() if k != "shortlist"}}


__all__ = [
    "AUTO_MIN_ROWS",
    "FaissIndex",
    "build_index",
    "choose_kind",
    "default_params",
    "estimate_memory",
    "import_faiss",
    "measure_recall",
    "shard_ranges",
    "tune",
    "update_index",
]
