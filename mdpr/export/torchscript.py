"""TorchScript export (traced eval model) with mdpr's metadata as an extra file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from mdpr.errors import MdprError
from mdpr.export.metadata import TORCHSCRIPT_EXTRA_FILE, ExportMetadata
from mdpr.fileio import atomic_path

PathLike = Union[str, "os.PathLike[str]"]


def write_torchscript(module: nn.Module, output: PathLike, meta: ExportMetadata, seed: int = 0) -> Path:
    """Trace ``module`` on a (2, 3, H, W) example and save it with ``meta`` as ``mdpr.json``."""
    out = Path(output)
    height, width = meta.input_size
    example = torch.rand(2, 3, int(height), int(width), generator=torch.Generator().manual_seed(seed))
    if meta.input_convention == "raw255":
        example = example * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches that do not depend on the input
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})
    return out


def load_torchscript(path: PathLike) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still supported
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise MdprError(f"{path} is not a readable TorchScript file ({str(exc).splitlines()[0]}); export it again.") from None
    return module.eval()


def read_torchscript_extra(path: PathLike) -> Optional[str]:
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise MdprError(f"{path} is not a readable TorchScript file ({str(exc).splitlines()[0]}); export it again.") from None
    value = extra[TORCHSCRIPT_EXTRA_FILE]
    return value.decode() if isinstance(value, bytes) else (value or None)
