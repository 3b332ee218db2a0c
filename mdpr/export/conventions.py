"""Pixel conventions of an exported graph's input, and the module that adapts a model to one.

``raw255``: RGB, values 0..255, resized to the checkpoint's test size -- mdpr's own convention; the graph
subtracts the checkpoint's pixel mean and divides by its std itself (as the PyTorch model does).

``imagenet``: RGB scaled to 0..1, then normalised with the ImageNet mean/std -- what trackers such as boxmot
feed every appearance model. The adapter turns such input back into 0..255 pixels inside the graph, so the
model's own normalisation (whatever its checkpoint's mean/std) still applies.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import nn

from mdpr.errors import MdprError

INPUT_CONVENTIONS: Tuple[str, ...] = ("raw255", "imagenet")
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


def check_convention(convention: str) -> str:
    """``convention`` if known, else one sentence naming the argument."""
    if convention not in INPUT_CONVENTIONS:
        raise MdprError(f"Unknown input convention '{convention}' (input_convention); use raw255 or imagenet.")
    return convention


def from_raw255(images: np.ndarray, convention: str) -> np.ndarray:
    """float32 NCHW 0..255 RGB images -> the input a graph of ``convention`` expects (a new array)."""
    x = np.asarray(images, dtype=np.float32)
    if check_convention(convention) == "raw255":
        return np.ascontiguousarray(x)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x / np.float32(255.0) - mean) / std)


def describe(convention: str) -> str:
    """One line for tables and docs."""
    if check_convention(convention) == "raw255":
        return "RGB 0..255 (the graph normalises)"
    return "RGB 0..1 normalised with ImageNet mean/std"


class ConventionAdapter(nn.Module):
    """``model`` fed images in ``convention``: for ``imagenet`` the input is mapped back to 0..255 first."""

    def __init__(self, model: nn.Module, convention: str) -> None:
        super().__init__()
        self.model = model
        self.convention = check_convention(convention)
        scale = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        shift = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.convention == "imagenet":
            scale: torch.Tensor = self.scale  # type: ignore[assignment]  # buffers are tensors
            shift: torch.Tensor = self.shift  # type: ignore[assignment]
            images = images * scale + shift
        out: torch.Tensor = self.model(images)
        return out


def adapt(model: nn.Module, convention: str) -> nn.Module:
    """``model`` itself for ``raw255`` (the exported graph stays exactly today's), else a :class:`ConventionAdapter`."""
    return model if check_convention(convention) == "raw255" else ConventionAdapter(model, convention).eval()
