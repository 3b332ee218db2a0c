"""Small clustered feature stores for the index tests (shaped like ReID embeddings: identities are clusters)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mdpr.store import StoreMeta, write_store

#: Fast IVF-PQ settings for small test stores.
SMALL_IVFPQ = {"nlist": 16, "m": 8, "nbits": 4}


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))).astype(np.float32)


def make_store(path: Path, n: int = 2000, dim: int = 32, seed: int = 0, dtype: str = "float16",
               normalized: bool = True, features: Optional[np.ndarray] = None) -> Path:
    feats = clustered(n, dim, seed) if features is None else features
    meta = StoreMeta(dim=feats.shape[1], dtype=dtype, fingerprint="f" * 16, normalized=normalized)
    write_store(path, meta, feats, [f"p{i:06d}.jpg" for i in range(len(feats))],
                pids=[i % 50 for i in range(len(feats))], camids=[i % 3 for i in range(len(feats))])
    return path
