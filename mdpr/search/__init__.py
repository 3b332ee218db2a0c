"""Nearest-neighbour search of probe features against a feature store.

- :mod:`mdpr.search.exact`: exact search (a scan of the store or of an in-memory copy), the reference.
- :mod:`mdpr.search.index`: the one small :class:`Index` interface (exact, or a faiss index beside the
  store), :func:`open_index` and the index files' metadata and freshness rules.
- :mod:`mdpr.search.faiss_index`: building, tuning, updating and loading faiss indexes (flat, HNSW,
  IVF-PQ, sharded); needs the optional extra ``mdpr[faiss]``.
- :mod:`mdpr.search.parquet`: a store's rows as Parquet for vector databases (extra ``mdpr[parquet]``).
"""

from __future__ import annotations

from mdpr.search.exact import METRICS, GalleryIndex, SearchResult, ranked_results, search
from mdpr.search.index import ExactIndex, Index, IndexMeta, index_dir_for, open_index, read_index_meta

__all__ = [
    "METRICS",
    "ExactIndex",
    "GalleryIndex",
    "Index",
    "IndexMeta",
    "SearchResult",
    "index_dir_for",
    "open_index",
    "ranked_results",
    "read_index_meta",
    "search",
]
