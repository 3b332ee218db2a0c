"""Datasets: parsers, manifests and the registry, transforms, samplers and loaders."""

from __future__ import annotations

from typing import Any

__all__ = ["load_dataset"]


def __getattr__(name: str) -> Any:
    if name == "load_dataset":
        from mdpr.data.records import load_dataset

        return load_dataset
    raise AttributeError(f"module 'mdpr.data' has no attribute {name!r}")
