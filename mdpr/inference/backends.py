"""Inference backends of :class:`~mdpr.inference.FeatureExtractor`: PyTorch, or an exported file run by ONNX
Runtime or OpenVINO, all fed the same preprocessed crops (checkpoint's test transform, RGB 0..255).

Features from fp32 backends of the same weights are interchangeable (cosine >= 0.99999 to PyTorch, checked
whenever a file is exported); INT8 features are not interchangeable with fp32 ones:
:func:`check_precision_match` is the rule a store reader applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from mdpr.errors import MdprError

#: what ``backend=`` accepts
BACKENDS: Tuple[str, ...] = ("torch", "onnxruntime", "openvino")
PRECISIONS: Tuple[str, ...] = ("fp32", "int8")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise MdprError(f"Unknown backend '{backend}' (backend); use one of {', '.join(BACKENDS)}.")
    return backend


def is_exported_file(path: Path) -> bool:
    """Whether ``path`` is an exported model (``.onnx``, ``.xml``, ``*_openvino_model`` folder, ``.torchscript``)."""
    return path.is_dir() or path.suffix.lower() in (".onnx", ".xml", ".torchscript", ".ts")


def check_precision_match(stored: Optional[str], current: Optional[str], *, allow_mixed_precision: bool = False,
                          where: str = "The feature store") -> None:
    """Refuse comparing INT8 features with fp32 ones unless ``allow_mixed_precision`` (one sentence).

    ``None`` (a store written before backends were recorded) counts as fp32: every earlier store came from
    PyTorch in fp32. The weights themselves are checked separately (the fingerprint rule).
    """
    a, b = stored or "fp32", current or "fp32"
    for value in (a, b):
        if value not in PRECISIONS:
            raise MdprError(f"Unknown feature precision '{value}'; expected fp32 or int8.")
    if a != b and not allow_mixed_precision:
        raise MdprError(
            f"{where} holds {a} features but this model runs in {b}; {a} and {b} features of the same weights "
            "differ, so extract both with the same precision (or allow mixed precision explicitly)."
        )


class FileBackend:
    """An exported file behind the extractor: takes (N, 3, H, W) float 0..255 RGB, returns (N, D) float32."""

    def __init__(self, path: Path, backend: str, threads: Optional[int]) -> None:
        from mdpr.export.runtime import open_runner

        self.runner = open_runner(path, backend, threads=threads)
        self.metadata = self.runner.metadata
        self.name = backend
        self.precision = self.metadata.precision

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from mdpr.export.conventions import from_raw255

        x = from_raw255(images.detach().cpu().numpy(), self.metadata.input_convention)
        return torch.from_numpy(np.ascontiguousarray(self.runner.run(x)))


def open_file_backend(weights: Path, backend: str, threads: Optional[int],
                      model: Optional[torch.nn.Module] = None, config: object = None,
                      fingerprint: Optional[str] = None) -> FileBackend:
    """A :class:`FileBackend` for an exported file, or for a checkpoint's model exported into the cache."""
    if check_backend(backend) == "torch":
        raise MdprError("The torch backend runs checkpoints; pass backend onnxruntime or openvino for an exported file.")
    if model is not None:
        from mdpr.export.cache import cached_onnx

        weights = cached_onnx(model, config, fingerprint or "")  # type: ignore[arg-type]
    return FileBackend(weights, backend, threads)
