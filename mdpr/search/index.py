"""One small search interface over a feature store, and the rules that tie an index file to a store.

An :class:`Index` answers ``search(probes, top_k)`` with a :class:`~mdpr.search.exact.SearchResult` whose
distances are exact: :class:`ExactIndex` is today's exact scan; a faiss index
(:class:`mdpr.search.faiss_index.FaissIndex`) finds a shortlist of candidate rows and their distances are
then recomputed exactly from the store, so every distance printed is the exact one.

An index lives beside its store, in the folder ``<store>.index/``: ``index.json`` (this module's
:class:`IndexMeta`, written last and atomically) names the faiss files of the build. It is tied to exactly
the rows it indexes (row count, a version stamp of the store and checksums of sample rows), to one metric
and to the store's normalisation. :func:`open_index` refuses a stale index or one built for another metric
in one sentence that gives the command to rebuild it; ``spec="auto"`` then searches exactly and says why.
"""

from __future__ import annotations

import json
import os
import zlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from mdpr.errors import MdprError
from mdpr.search.exact import METRICS, Progress, SearchResult, search
from mdpr.store import FeatureStore

PathLike = Union[str, "os.PathLike[str]"]

#: Identifies mdpr's index metadata among JSON files.
INDEX_FORMAT = "mdpr-faiss-index"
#: Version of the metadata layout; a reader refuses newer ones.
INDEX_VERSION = 1
#: Name of the metadata file inside ``<store>.index/``.
META_NAME = "index.json"
#: Rows whose checksums tie an index to the store's content (first, last and evenly spaced rows).
CHECK_ROWS = 16
#: Index kinds built with faiss.
FAISS_KINDS = ("flat", "hnsw", "ivfpq")
KIND_NAMES = {"exact": "exact", "flat": "flat", "hnsw": "HNSW", "ivfpq": "IVF-PQ"}


def index_dir_for(store_path: PathLike) -> Path:
    """The folder that holds the index of the store at ``store_path`` (``<store>.index``)."""
    p = Path(store_path)
    return p.with_name(p.name + ".index")


def store_stamp(store: FeatureStore) -> str:
    """A version stamp of the store: it changes whenever the store's rows change (added or rewritten).

    The store's own ``version_stamp`` where it has one (kept by rewrites that keep the rows, such as
    compaction); otherwise derived from public facts (rows, creation and update times, file size and
    modification time). This is the one place that decides.
    """
    stamp = getattr(store, "version_stamp", None)
    if isinstance(stamp, str) and stamp:
        return stamp
    stat = os.stat(store.path)
    created = getattr(store, "created", "")
    updated = getattr(store, "updated", "")
    return f"{len(store)}:{created}:{updated}:{stat.st_size}:{stat.st_mtime_ns}"


def _extends(store: FeatureStore, rows: int, stamp: str) -> Optional[bool]:
    """Whether the store's version ``stamp`` of ``rows`` rows is a prefix of the store now (None: the store cannot say)."""
    extends = getattr(store, "extends", None)
    return bool(extends(rows, stamp)) if callable(extends) else None


def check_rows(rows: int) -> List[int]:
    """The row numbers whose checksums are recorded for an index of the first ``rows`` rows."""
    if rows <= 0:
        return []
    return sorted({int(r) for r in np.linspace(0, rows - 1, num=min(CHECK_ROWS, rows)).round()})


def row_checksums(store: FeatureStore, rows: List[int]) -> List[List[Any]]:
    """``[[row, crc32 of (path, feature bytes)], ...]``: ties an index to the content of those rows."""
    if not rows:
        return []
    feats = store.read_features(dtype=store.dtype, rows=rows)
    paths = store.paths_at(rows)
    return [[r, zlib.crc32(p.encode("utf-8") + feats[i].tobytes())] for i, (r, p) in enumerate(zip(rows, paths))]


@dataclass
class IndexMeta:
    """What ``<store>.index/index.json`` records about a build (see ``docs/feature-store.md``)."""

    kind: str  #: flat, hnsw or ivfpq
    metric: str  #: cosine or euclidean
    rows: int  #: the store's first ``rows`` rows are indexed
    dim: int
    normalized: bool  #: the store's normalisation when the index was built
    fingerprint: str  #: the store's model fingerprint
    stamp: str  #: :func:`store_stamp` of the store when the index was last written
    checks: List[List[Any]]  #: :func:`row_checksums` of :func:`check_rows`
    params: Dict[str, Any]  #: build settings (nlist, m, nbits / hnsw_m, ef_construction)
    search: Dict[str, Any]  #: search settings (nprobe / ef), tuned when a recall target was given
    shards: List[Dict[str, Any]]  #: [{"file", "start", "stop", "bytes"}] over consecutive row ranges
    reason: str = ""  #: why this kind was chosen
    recall: Dict[str, Any] = field(default_factory=dict)  #: measured recall@1/10/100 and how
    memory_bytes: int = 0  #: size of the faiss index in memory (about its file sizes)
    built: str = ""  #: ISO 8601 UTC time of the build (or of the last incremental update)
    build_seconds: float = 0.0
    mdpr_version: str = ""
    format: str = INDEX_FORMAT
    version: int = INDEX_VERSION

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> IndexMeta:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def name(self) -> str:
        """The kind as people write it (IVF-PQ, HNSW, flat)."""
        return KIND_NAMES.get(self.kind, self.kind)

    def settings_text(self) -> str:
        parts = [f"{k} {v}" for k, v in self.search.items()]
        if len(self.shards) > 1:
            parts.append(f"{len(self.shards)} shards")
        return ", ".join(parts)


def read_index_meta(location: Union[PathLike, FeatureStore]) -> Optional[IndexMeta]:
    """The metadata of the index of a store (a :class:`FeatureStore` or its file, an index folder or its
    index.json); None when there is none."""
    if isinstance(location, FeatureStore):
        folder = index_dir_for(location.path)
    else:
        p = Path(location)
        folder = p.parent if p.name == META_NAME else index_dir_for(p) if p.is_file() else p
    file = folder / META_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MdprError(f"Index metadata {file} could not be read ({exc}); rebuild the index with "
                        "`mdpr index build --gallery STORE`.") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise MdprError(f"{file} is not an mdpr index (no format '{INDEX_FORMAT}'); pass the folder written by "
                        "`mdpr index build`.")
    if int(data.get("version", 0)) > INDEX_VERSION:
        raise MdprError(f"Index {folder} uses metadata version {data.get('version')}, newer than this mdpr reads "
                        f"(up to {INDEX_VERSION}); upgrade mdpr or rebuild the index.")
    try:
        return IndexMeta.from_json(data)
    except TypeError as exc:
        raise MdprError(f"Index metadata {file} is incomplete ({exc}); rebuild the index with "
                        "`mdpr index build --gallery STORE`.") from None


def rebuild_command(store: FeatureStore, meta: Optional[IndexMeta] = None) -> str:
    extra = ""
    if meta is not None:
        extra = f" --kind {meta.kind}" + (f" --metric {meta.metric}" if meta.metric != "cosine" else "")
    return f"`mdpr index build --gallery {store.path}{extra}`"


def freshness(store: FeatureStore, meta: IndexMeta) -> Tuple[str, str]:
    """``(state, sentence)``: state is ``fresh``, ``appended`` (the store gained rows after the indexed ones,
    which are unchanged: :func:`mdpr.search.faiss_index.update_index` adds them) or ``stale``."""
    where = f"The index {index_dir_for(store.path)}"
    if meta.fingerprint != store.fingerprint or meta.dim != store.dim:
        return "stale", (f"{where} was built from a store of another model ({meta.dim}-d, fingerprint "
                         f"{meta.fingerprint[:12] or 'none'}); rebuild it with {rebuild_command(store, meta)}.")
    if bool(meta.normalized) != bool(store.normalized):
        said = "L2-normalised" if meta.normalized else "raw"
        return "stale", (f"{where} was built from {said} features but the store's normalisation differs; rebuild "
                         f"it with {rebuild_command(store, meta)}.")
    n = len(store)
    # the store's own history of versions, where it keeps one, decides; checksums of sample rows guard both ways
    prefix = _extends(store, meta.rows, meta.stamp)
    if prefix is not False and meta.rows <= n and row_checksums(store, [r for r, _ in meta.checks]) == meta.checks:
        if meta.rows == n and meta.stamp == store_stamp(store):
            return "fresh", f"{where} is up to date ({n} rows)."
        if meta.rows < n:
            return "appended", (f"{where} covers the first {meta.rows} of the store's {n} rows; add the new rows "
                                f"with `mdpr index update {store.path}` or rebuild it with {rebuild_command(store, meta)}.")
    return "stale", (f"{where} was built for another version of the store ({meta.rows} rows, now {n}); rebuild it "
                     f"with {rebuild_command(store, meta)}.")


def check_usable(store: FeatureStore, meta: IndexMeta, metric: str) -> None:
    """Raise :class:`MdprError` (one sentence with the rebuild command) unless the index serves this store and metric."""
    if metric != meta.metric:
        raise MdprError(
            f"The index {index_dir_for(store.path)} was built for {meta.metric} distances, not {metric}; search with "
            f"metric '{meta.metric}', or build one for {metric} with `mdpr index build --gallery {store.path} "
            f"--metric {metric}`."
        )
    state, sentence = freshness(store, meta)
    if state != "fresh":
        raise MdprError(sentence)


class Index(ABC):
    """Nearest gallery rows of a store for probe features, with exact distances.

    ``kind`` is ``exact``, ``flat``, ``hnsw`` or ``ivfpq``; ``metric`` is fixed when the index is opened.
    """

    kind: str
    metric: str
    store: FeatureStore

    def __len__(self) -> int:
        return len(self.store)

    @abstractmethod
    def search(
        self,
        probes: Any,
        top_k: int = 10,
        *,
        rerank: bool = False,
        rerank_pool: int = 100,
        shortlist: Optional[int] = None,
        progress: Optional[Progress] = None,
    ) -> SearchResult:
        """The ``top_k`` nearest rows per probe ((D,) or (Q, D)), nearest first, with exact distances.

        ``rerank=True`` re-orders each probe's ``rerank_pool`` nearest rows with k-reciprocal re-ranking (the
        distances are then the re-ranked ones). ``shortlist`` (approximate kinds): how many candidates the
        index proposes before their exact distances are computed (default: the index's own setting).
        """

    def describe(self) -> str:
        """One line for users: which index answers, and how it was built."""
        return f"{KIND_NAMES.get(self.kind, self.kind)} search over {len(self)} rows"


class ExactIndex(Index):
    """Today's exact search: the store is scanned in chunks for every batch of probes."""

    kind = "exact"

    def __init__(self, store: FeatureStore, metric: str = "cosine") -> None:
        if metric not in METRICS:
            raise MdprError(f"Unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
        self.store = store
        self.metric = metric

    def search(
        self,
        probes: Any,
        top_k: int = 10,
        *,
        rerank: bool = False,
        rerank_pool: int = 100,
        shortlist: Optional[int] = None,
        progress: Optional[Progress] = None,
    ) -> SearchResult:
        return search(self.store, probes, top_k=top_k, metric=self.metric, rerank=rerank, rerank_pool=rerank_pool,
                      progress=progress)

    def describe(self) -> str:
        return f"exact search over {len(self)} rows"


def open_index(
    store: FeatureStore,
    spec: str = "auto",
    metric: str = "cosine",
    nprobe: Optional[int] = None,
    ef: Optional[int] = None,
) -> Tuple[Index, str]:
    """The index that answers searches of ``store``, and one sentence for the user saying which and why.

    ``spec``: ``"exact"`` (scan the store), ``"auto"`` (the store's index in ``<store>.index/`` when it is
    fresh and built for ``metric``, else exact search; the note says which and why), or the path of an index
    folder (refused in one sentence when stale or built for another metric). ``nprobe`` (IVF-PQ) and ``ef``
    (HNSW) override the index's tuned search settings.
    """
    if metric not in METRICS:
        raise MdprError(f"Unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
    if spec == "exact":
        _no_settings(nprobe, ef, "exact search")
        return ExactIndex(store, metric), f"Exact search over {len(store)} rows."
    if spec == "auto":
        meta = read_index_meta(store)
        if meta is None:
            _no_settings(nprobe, ef, f"exact search (the store {store.path} has no index)")
            return ExactIndex(store, metric), f"Exact search over {len(store)} rows (no index beside the store)."
        try:
            check_usable(store, meta, metric)
        except MdprError as exc:
            _no_settings(nprobe, ef, "exact search (the store's index cannot be used)")
            return ExactIndex(store, metric), f"Exact search, not the index: {exc}"
        folder = index_dir_for(store.path)
    else:
        folder = Path(spec)
        if folder.name == META_NAME:
            folder = folder.parent
        meta = read_index_meta(folder)
        if meta is None:
            raise MdprError(f"Index {folder} does not exist (no {META_NAME}); build one with "
                            f"`mdpr index build --gallery {store.path}`, or search with index 'auto' or 'exact'.")
        check_usable(store, meta, metric)
    from mdpr.search.faiss_index import FaissIndex

    index = FaissIndex.load(store, folder, meta, nprobe=nprobe, ef=ef)
    return index, f"Using the {index.describe()}."


def _no_settings(nprobe: Optional[int], ef: Optional[int], what: str) -> None:
    if nprobe is not None or ef is not None:
        name = "nprobe" if nprobe is not None else "ef"
        raise MdprError(f"{name} tunes an IVF-PQ or HNSW index, but the search is {what}; leave {name} out or "
                        "build an index with `mdpr index build`.")


__all__ = [
    "FAISS_KINDS",
    "INDEX_FORMAT",
    "ExactIndex",
    "Index",
    "IndexMeta",
    "check_usable",
    "freshness",
    "index_dir_for",
    "open_index",
    "read_index_meta",
    "store_stamp",
]
