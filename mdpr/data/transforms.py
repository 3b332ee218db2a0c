"""Image transforms. Tensors stay on the 0..255 scale (fast-reid's convention); the model normalises.

Test-time: resize to ``input.size_test`` with the configured interpolation, then to a float CHW tensor.
"""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mdpr.config import InputConfig
from mdpr.errors import MdprError

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[name.lower()]
    except KeyError:
        raise MdprError(f"Unknown interpolation '{name}'; use one of {', '.join(_INTERPOLATIONS)}.") from None


def to_tensor_255(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 tensor (3, H, W) with values 0..255 (no division, as fast-reid's ToTensor)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


class TestTransform:
    """Resize to ``size`` (height, width) then :func:`to_tensor_255`. Picklable for DataLoader workers."""

    def __init__(self, size: Tuple[int, int], interpolation: str = "bicubic") -> None:
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation
        self._mode = interpolation_mode(interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.size != (self.size[1], self.size[0]):
            img = TF.resize(img, list(self.size), interpolation=self._mode, antialias=True)
        return to_tensor_255(img)


def build_test_transform(cfg: InputConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation / extraction preprocessing described by ``cfg``."""
    return TestTransform(cfg.size_test, cfg.interpolation)
