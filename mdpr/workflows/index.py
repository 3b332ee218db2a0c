"""``mdpr index``: build, update and describe the faiss index beside a feature store."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from mdpr.errors import MdprError
from mdpr.fileio import check_output_folder

PathLike = Union[str, "os.PathLike[str]"]
#: ``progress(stage, done, total)``; stages ``train``, ``add``, ``recall``.
Stage = Callable[[str, int, int], None]


@dataclass
class IndexBuildResult:
    """What a build (or an update) did."""

    store: Path
    kind: str  #: exact (nothing written: exact search suits this store), flat, hnsw or ivfpq
    reason: str  #: why this kind
    rows: int
    dim: int
    metric: str
    memory_bytes: int  #: the index's size in memory (0 for exact)
    recall: Dict[str, Any]  #: measured recall@1/10/100 ({} for exact)
    settings: Dict[str, Any]  #: search settings (nprobe / ef, shortlist)
    params: Dict[str, Any]  #: build settings (nlist, m, nbits / hnsw_m, ef_construction)
    shards: int
    seconds: float
    path: Optional[Path] = None  #: the index folder (None when nothing was written)
    updated: bool = False  #: an update added appended rows to an existing index

    def to_json(self) -> Dict[str, Any]:
        return {"store": str(self.store), "kind": self.kind, "reason": self.reason, "rows": self.rows, "dim": self.dim,
                "metric": self.metric, "memory_bytes": self.memory_bytes, "recall": self.recall,
                "settings": self.settings, "params": self.params, "shards": self.shards, "seconds": self.seconds,
                "path": str(self.path) if self.path else None, "updated": self.updated}


@dataclass
class IndexInfo:
    """The index beside a store and whether it can be used."""

    store: Path
    store_rows: int
    state: str  #: none, fresh, appended (update it) or stale (rebuild it)
    note: str  #: one sentence on the state
    kind: Optional[str] = None
    metric: Optional[str] = None
    normalized: Optional[bool] = None
    rows: int = 0
    dim: int = 0
    memory_bytes: int = 0
    recall: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    params: Dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    reason: str = ""
    built: str = ""
    path: Optional[Path] = None

    def to_json(self) -> Dict[str, Any]:
        return {"store": str(self.store), "store_rows": self.store_rows, "state": self.state, "note": self.note,
                "kind": self.kind, "metric": self.metric, "normalized": self.normalized, "rows": self.rows,
                "dim": self.dim, "memory_bytes": self.memory_bytes, "recall": self.recall, "settings": self.settings,
                "params": self.params, "shards": self.shards, "reason": self.reason, "built": self.built,
                "path": str(self.path) if self.path else None}


def _result(store: Any, meta: Any, seconds: float, updated: bool = False) -> IndexBuildResult:
    from mdpr.search import index_dir_for

    return IndexBuildResult(
        store=Path(store.path), kind=meta.kind, reason=meta.reason, rows=meta.rows, dim=meta.dim, metric=meta.metric,
        memory_bytes=meta.memory_bytes, recall=dict(meta.recall), settings=dict(meta.search), params=dict(meta.params),
        shards=len(meta.shards), seconds=round(seconds, 3), path=index_dir_for(store.path), updated=updated,
    )


def _open_store(gallery: PathLike) -> Any:
    from mdpr.store import FeatureStore

    store = FeatureStore.open(gallery)
    if store.has_pending_journal:
        store.close()
        raise MdprError(f"Feature store {gallery} has rows not folded in yet (an extraction was interrupted); finish "
                        "it by re-running the same `mdpr extract` command, then build the index.")
    return store


def build_index(
    gallery: PathLike,
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
    threads: Optional[int] = None,
    progress: Optional[Stage] = None,
) -> IndexBuildResult:
    """Build the index of the store ``gallery`` in ``<gallery>.index/`` (see :func:`mdpr.search.faiss_index.build_index`).

    ``kind="auto"`` may choose exact search (a store below about a million rows): nothing is written and the
    result says why.
    """
    from mdpr.search import index_dir_for
    from mdpr.search.faiss_index import build_index as build
    from mdpr.search.faiss_index import choose_kind

    started = time.perf_counter()
    with _open_store(gallery) as store:
        if kind == "auto":
            chosen, reason = choose_kind(len(store), store.dim)
            if chosen == "exact":
                return IndexBuildResult(store=Path(store.path), kind="exact", reason=reason, rows=len(store),
                                        dim=store.dim, metric=metric, memory_bytes=0, recall={}, settings={},
                                        params={}, shards=0, seconds=round(time.perf_counter() - started, 3))
        check_output_folder(index_dir_for(store.path), "the index")
        meta = build(store, kind, metric, recall=recall, nlist=nlist, m=m, nbits=nbits, hnsw_m=hnsw_m,
                     ef_construction=ef_construction, shards=shards, gpu=gpu, threads=threads, progress=progress)
        assert meta is not None
        return _result(store, meta, time.perf_counter() - started)


def update_index(gallery: PathLike, progress: Optional[Stage] = None) -> IndexBuildResult:
    """Add the rows appended to ``gallery`` since its index was built (refused as stale when not a pure append)."""
    from mdpr.search import index_dir_for, read_index_meta
    from mdpr.search.faiss_index import update_index as update

    started = time.perf_counter()
    with _open_store(gallery) as store:
        check_output_folder(index_dir_for(store.path), "the index")
        before = read_index_meta(store)
        meta = update(store, progress=progress)
        return _result(store, meta, time.perf_counter() - started,
                       updated=before is not None and before.rows != meta.rows)


def index_info(gallery: PathLike) -> IndexInfo:
    """Kind, size, memory, recall and settings of the index beside ``gallery``, and whether it is fresh."""
    from mdpr.search import index_dir_for, read_index_meta
    from mdpr.search.index import freshness
    from mdpr.store import FeatureStore

    with FeatureStore.open(gallery) as store:
        meta = read_index_meta(store)
        if meta is None:
            return IndexInfo(store=Path(store.path), store_rows=len(store), state="none",
                             note=f"The store has no index; build one with `mdpr index build --gallery {store.path}`.")
        state, note = freshness(store, meta)
        return IndexInfo(
            store=Path(store.path), store_rows=len(store), state=state, note=note, kind=meta.kind, metric=meta.metric,
            normalized=meta.normalized, rows=meta.rows, dim=meta.dim, memory_bytes=meta.memory_bytes,
            recall=dict(meta.recall), settings=dict(meta.search), params=dict(meta.params), shards=len(meta.shards),
            reason=meta.reason, built=meta.built, path=index_dir_for(store.path),
        )


__all__ = ["IndexBuildResult", "IndexInfo", "build_index", "index_info", "update_index"]
