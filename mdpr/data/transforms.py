"""Image transforms. Tensors stay on the 0..255 scale (fast-reid's convention); the model normalises.

Test-time: resize to ``input.size_test`` with the configured interpolation, then to a float CHW tensor.

Train-time (fast-reid's order): [AutoAugment] -> resize to ``input.size_train`` -> pad + random crop ->
horizontal flip -> tensor -> random erasing -> :class:`RandomPatch` (with a pool of patches kept per
DataLoader worker across batches, as fast-reid). Every random choice comes from a per-image seed
handed out by the sampler (never from global or per-worker RNG state), so the augmented pixels are
reproducible, also after an interrupted run is resumed; only the patch pool depends on the number of
DataLoader workers (as in fast-reid).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from mdpr.config import InputConfig
from mdpr.errors import MdprError

# torchvision is imported only where it is used: importing it pulls in torch._dynamo (about 1.6 s on a
# 2-core machine), which would double the start-up of `mdpr extract` / `mdpr query`.
_INTERPOLATIONS = {  # name -> PIL resampling filter (what torchvision's resize uses for PIL images)
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _check_interpolation(name: str) -> str:
    if name.lower() not in _INTERPOLATIONS:
        raise MdprError(f"Unknown interpolation '{name}'; use one of {', '.join(_INTERPOLATIONS)}.")
    return name.lower()


def pil_resize(img: Image.Image, size: Tuple[int, int], interpolation: str) -> Image.Image:
    """Resize to ``size`` = (height, width): exactly ``torchvision.transforms.functional.resize`` on a PIL
    image (which calls PIL's ``resize`` with the same filter; PIL always antialiases)."""
    return img.resize((int(size[1]), int(size[0])), _INTERPOLATIONS[_check_interpolation(interpolation)])


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
        self.interpolation = _check_interpolation(interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.size != (self.size[1], self.size[0]):
            img = pil_resize(img, self.size, self.interpolation)
        return to_tensor_255(img)


def build_test_transform(cfg: InputConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation / extraction preprocessing described by ``cfg``."""
    return TestTransform(cfg.size_test, cfg.interpolation)


class RandomErasing:
    """Erase one random rectangle with probability ``prob`` (torchvision's RandomErasing, as fast-reid
    applies it after its 0..255 ToTensor: area 2-33 %, aspect 0.3-3.3, filled with ``value`` per channel)."""

    def __init__(
        self,
        prob: float = 0.5,
        value: Sequence[float] = (123.675, 116.28, 103.53),
        scale: Tuple[float, float] = (0.02, 0.33),
        ratio: Tuple[float, float] = (0.3, 3.3),
    ) -> None:
        self.prob = float(prob)
        self.value = tuple(float(v) for v in value)
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if rng.random() >= self.prob:
            return img
        _, height, width = img.shape
        area = height * width
        for _ in range(10):
            erase_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            h = int(round(math.sqrt(erase_area * aspect)))
            w = int(round(math.sqrt(erase_area / aspect)))
            if not (h < height and w < width):
                continue
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            img[:, top : top + h, left : left + w] = torch.tensor(self.value, dtype=img.dtype).view(-1, 1, 1)
            return img
        return img


class PatchPool:
    """The rolling pool of :class:`RandomPatch`: the last ``capacity`` patches, each with the dataset
    index of the image it was cut from (to report where an occluder came from)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.patches: Deque[Tuple[torch.Tensor, int]] = deque(maxlen=max(1, int(capacity)))

    def __len__(self) -> int:
        return len(self.patches)

    def append(self, patch: torch.Tensor, source: int) -> None:
        self.patches.append((patch, int(source)))


class RandomPatch:
    """Occlusion by pasting a patch cut from another person image (fast-reid's / OSNet's RandomPatch).

    As fast-reid, for each image in turn: cut a random patch from it (area 1-50 %, aspect 0.1-10) and
    append it to a rolling :class:`PatchPool` of the last ``pool_size`` patches (1000); once the pool
    holds ``min_pool`` patches (100), paste, with probability ``prob``, a patch drawn uniformly from the
    pool (mirrored with probability 0.5) at a random position. The pool is kept by the caller
    (:class:`mdpr.data.loader.TrainCollate` keeps one per DataLoader worker, across batches); every
    random draw comes from the image's own ``random.Random``, the cut first, so a patch is a pure
    function of its image (what makes the pool reproducible; see docs/training.md).
    """

    def __init__(
        self,
        prob: float = 0.5,
        pool_size: int = 1000,
        min_pool: int = 100,
        min_area: float = 0.01,
        max_area: float = 0.5,
        min_ratio: float = 0.1,
        flip_prob: float = 0.5,
    ) -> None:
        self.prob = float(prob)
        self.pool_size = int(pool_size)
        self.min_pool = int(min_pool)
        self.min_area = min_area
        self.max_area = max_area
        self.min_ratio = min_ratio
        self.flip_prob = flip_prob

    def new_pool(self) -> PatchPool:
        return PatchPool(self.pool_size)

    def _patch_size(self, width: int, height: int, rng: random.Random) -> Optional[Tuple[int, int]]:
        area = width * height
        for _ in range(100):
            target = rng.uniform(self.min_area, self.max_area) * area
            aspect = rng.uniform(self.min_ratio, 1.0 / self.min_ratio)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < w < width and 0 < h < height:
                return w, h
        return None

    def cut(self, img: torch.Tensor, rng: random.Random) -> Optional[torch.Tensor]:
        """A random patch of ``img`` (a copy), or None when no size fits."""
        _, height, width = img.shape
        size = self._patch_size(width, height, rng)
        if size is None:
            return None
        w, h = size
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        return img[:, y : y + h, x : x + w].clone()

    def apply(self, img: torch.Tensor, pool: PatchPool, rng: random.Random, source: int = -1) -> int:
        """Feed ``img``'s patch to ``pool``, then maybe paste a pool patch onto ``img`` (in place).

        Returns the dataset index the pasted patch was cut from, or -1 when nothing was pasted.
        """
        patch = self.cut(img, rng)
        if patch is not None:
            pool.append(patch, source)
        if len(pool) < max(1, self.min_pool) or rng.random() >= self.prob:
            return -1
        patch, origin = pool.patches[rng.randrange(len(pool))]
        if rng.random() < self.flip_prob:
            patch = torch.flip(patch, dims=[2])
        _, ph, pw = patch.shape
        _, height, width = img.shape
        x, y = rng.randint(0, width - pw), rng.randint(0, height - ph)
        img[:, y : y + ph, x : x + pw] = patch
        return origin

    def __call__(self, images: List[torch.Tensor], rng: random.Random) -> List[torch.Tensor]:
        """Augment ``images`` (same-sized CHW tensors) in place with a pool of their own; returns them."""
        pool = self.new_pool()
        for img in images:
            self.apply(img, pool, rng)
        return images


class TrainTransform:
    """One image's training augmentation, driven by an explicit ``random.Random``. Picklable."""

    def __init__(self, cfg: InputConfig) -> None:
        self.size = (int(cfg.size_train[0]), int(cfg.size_train[1]))
        self.interpolation = _check_interpolation(cfg.interpolation)
        self.flip_prob = float(cfg.flip_prob)
        self.padding = int(cfg.padding)
        self.autoaug_prob = float(cfg.autoaug_prob)
        self.erasing = RandomErasing(cfg.random_erasing_prob, cfg.pixel_mean) if cfg.random_erasing_prob > 0 else None

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if self.autoaug_prob > 0 and rng.random() < self.autoaug_prob:
            img = _auto_augment(img, rng.getrandbits(63))
        height, width = self.size
        if img.size != (width, height):
            img = pil_resize(img, (height, width), self.interpolation)
        if self.padding > 0:
            # pad with zeros then crop back to size == shift by up to `padding` pixels (PIL fills with 0)
            dy = rng.randint(0, 2 * self.padding) - self.padding
            dx = rng.randint(0, 2 * self.padding) - self.padding
            if dx or dy:
                img = img.crop((dx, dy, dx + width, dy + height))
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = to_tensor_255(img)
        if self.erasing is not None:
            tensor = self.erasing(tensor, rng)
        return tensor


def _auto_augment(img: Image.Image, seed: int) -> Image.Image:
    # torchvision's AutoAugment draws from torch's global RNG: fork it so the seed stays local.
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoAugment(AutoAugmentPolicy.IMAGENET)(img)


def build_train_transform(cfg: InputConfig) -> TrainTransform:
    """The per-image training augmentation described by ``cfg`` (see :class:`TrainTransform`)."""
    return TrainTransform(cfg)
