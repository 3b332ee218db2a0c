"""The feature store: HDF5 files of (path, pid, camid, feature) rows plus the metadata to trust them.

Layout (schema version 1; ``docs/feature-store.md`` is the reference)::

    /features  (N, D) float32 or float16, chunked by rows (about 1 MiB per chunk), resizable
    /paths     (N,)   UTF-8 strings, relative to the ``root`` attribute when the image lies under it
    /pids      (N,)   int32, -1 when unknown
    /camids    (N,)   int32, 0-based, -1 when unknown
    attributes: format, schema_version, mdpr_version, model_fingerprint, model_config (JSON),
                preprocessing (JSON), normalized, flip, root, created, updated, complete,
                failed_images (JSON list of {"path", "reason"})

The modules, from the bottom up: :mod:`~mdpr.store.schema` (constants, :class:`StoreMeta`, row
checks, the same-weights rule), :mod:`~mdpr.store.reader` (:class:`FeatureStore`, memory-mapped
scans), :mod:`~mdpr.store.hdf5` (atomic whole-file writes, :func:`write_store`),
:mod:`~mdpr.store.journal` (the write-ahead journal) and :mod:`~mdpr.store.writer`
(:class:`StoreWriter`: crash-safe, resumable appends).
"""

from __future__ import annotations

from mdpr.runtime import l2_normalize
from mdpr.store.hdf5 import write_store
from mdpr.store.reader import FeatureStore, Segment
from mdpr.store.schema import (
    BLOCK_BYTES,
    CHUNK_BYTES,
    SCHEMA_VERSION,
    STORE_FORMAT,
    UNKNOWN,
    StoreMeta,
    check_same_weights,
    chunk_rows_for,
    journal_path_for,
    path_key,
)
from mdpr.store.writer import Compaction, StoreWriter, compact, store_bytes

__all__ = [
    "BLOCK_BYTES",
    "CHUNK_BYTES",
    "SCHEMA_VERSION",
    "STORE_FORMAT",
    "UNKNOWN",
    "Compaction",
    "FeatureStore",
    "Segment",
    "StoreMeta",
    "StoreWriter",
    "check_same_weights",
    "compact",
    "chunk_rows_for",
    "journal_path_for",
    "l2_normalize",
    "path_key",
    "store_bytes",
    "write_store",
]
