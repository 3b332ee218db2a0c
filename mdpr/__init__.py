"""mdpr: person re-identification with MDPR (Mutual Distillation Learning for Person Re-Identification)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "FeatureExtractor", "MdprError"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import mdpr` (and `mdpr --help`) does not pay for torch.
    if name == "FeatureExtractor":
        from mdpr.inference import FeatureExtractor

        return FeatureExtractor
    if name == "MdprError":
        from mdpr.errors import MdprError

        return MdprError
    raise AttributeError(f"module 'mdpr' has no attribute {name!r}")
