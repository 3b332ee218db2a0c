"""Turning what users pass (files, PIL images, numpy arrays) into decoded RGB images and batches."""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdpr.data.images import ImageReadError, decode_image, load_rgb, to_rgb8
from mdpr.errors import MdprError

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[PathLike, Image.Image, np.ndarray]


class ImageFileDataset(Dataset):
    """Decodes and transforms image files by index; a file that cannot be read yields ``None`` and the reason.

    Picklable (plain paths and a picklable transform), so it works with any DataLoader start method.
    """

    def __init__(self, paths: Sequence[PathLike], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], str]:
        path = self.paths[index]
        try:
            return index, self.transform(load_rgb(path)), ""
        except ImageReadError as exc:
            return index, None, _reason(exc, path)
        except (OSError, ValueError, SyntaxError, MemoryError) as exc:  # decoded but unusable (e.g. a 0-pixel image)
            return index, None, f"{type(exc).__name__}: {exc}"


def _reason(exc: Exception, path: str) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def collate_images(items: List[Tuple[int, Optional[torch.Tensor], str]]) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Tuple[int, str]]]:
    """``(indices of decoded images, stacked tensor or None, [(index, reason) of failures])``."""
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, r) for i, t, r in items if t is None]
    indices = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    batch = torch.stack([t for _, t in ok]) if ok else None
    return indices, batch, failed


def as_image_list(images: Any) -> List[Any]:
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    try:
        return list(images)
    except TypeError:
        raise MdprError(
            f"Cannot embed a {type(images).__name__}; pass file paths, PIL images or HxWx3 uint8 RGB numpy arrays."
        ) from None


def to_pil(item: Any, position: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb8(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise MdprError(
                f"Image {position} is a numpy array of shape {item.shape} and dtype {item.dtype}; "
                "pass HxWx3 uint8 arrays in RGB order."
            )
        return Image.fromarray(np.ascontiguousarray(item))
    if isinstance(item, (str, os.PathLike)):
        return decode_image(item)
    raise MdprError(
        f"Image {position} is a {type(item).__name__}; pass file paths, PIL images or HxWx3 uint8 RGB numpy arrays."
    )
