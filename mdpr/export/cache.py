"""Exports made on the fly for inference backends, cached under ``$MDPR_HOME/cache/exports``.

One file per weights fingerprint and mdpr version, in mdpr's own input convention (raw255), checked
against PyTorch when it is written like every export; a cached file whose metadata no longer matches is
written again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mdpr.config import Config
from mdpr.errors import MdprError
from mdpr.export.exporter import export_model
from mdpr.export.metadata import read_export_metadata


def cache_dir() -> Path:
    from mdpr.data.records import mdpr_home

    return mdpr_home() / "cache" / "exports"


def cached_onnx(model: torch.nn.Module, config: Config, fingerprint: str) -> Path:
    """The cached fp32 ONNX export of ``model`` (fingerprint ``fingerprint``), written first when missing."""
    from mdpr import __version__

    path = cache_dir() / f"{fingerprint}-mdpr{__version__}-raw255-fp32.onnx"
    if path.is_file():
        try:
            meta = read_export_metadata(path)
            if meta.fingerprint == fingerprint and meta.mdpr_version == __version__:
                return path
        except MdprError:
            pass  # a damaged cache entry is simply written again
    report = export_model(None, path, format="onnx", input_convention="raw255", model=model, config=config,
                          fingerprint=fingerprint)
    if not report.passed:
        path.unlink(missing_ok=True)
        p = report.parity[0]
        raise MdprError(
            f"The ONNX export of these weights differs from PyTorch (min cosine {p.min_cosine:.6f}, max |diff| "
            f"{p.max_abs_diff:.3g}); use backend torch, and report the problem."
        )
    return path
