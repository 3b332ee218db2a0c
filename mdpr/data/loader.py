"""DataLoader builders for training (PK batches, seeded augmentation) and testing (plain image lists).

Image loading never crashes a run: an unreadable training image is replaced by another image of the
same identity (chosen from the slot's seed, so the replacement is reproducible), or by a mean-colour
image when none of that identity's images can be read, and reported in the batch's ``failed`` list so
the trainer counts it. A test image that cannot be read is reported with ``ok = False``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mdpr.config import Config, InputConfig
from mdpr.data.images import ImageReadError, load_rgb
from mdpr.data.sampler import PKBatchSampler, Slot
from mdpr.data.transforms import RandomPatch, TrainTransform, build_test_transform

PathLike = Union[str, Path]


@dataclass
class TrainSample:
    image: torch.Tensor
    pid: int
    camid: int
    index: int
    seed: int
    failed: List[str]  #: paths that could not be read while producing this sample


class TrainImageDataset(Dataset):
    """Training images addressed by :data:`~mdpr.data.sampler.Slot` ``(index, seed)``."""

    def __init__(
        self,
        paths: Sequence[PathLike],
        pids: Sequence[int],
        camids: Sequence[int],
        transform: TrainTransform,
        fill: Sequence[float] = (123.675, 116.28, 103.53),
    ) -> None:
        if not (len(paths) == len(pids) == len(camids)):
            raise ValueError("paths, pids and camids must have the same length")
        self.paths = [str(p) for p in paths]
        self.pids = [int(p) for p in pids]
        self.camids = [int(c) for c in camids]
        self.transform = transform
        self.fill = tuple(int(round(v)) for v in fill)
        self._same_pid: Dict[int, List[int]] = {}
        for i, pid in enumerate(self.pids):
            self._same_pid.setdefault(pid, []).append(i)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, slot: Slot) -> TrainSample:
        index, seed = slot
        rng = random.Random(seed)
        failed: List[str] = []
        img = self._load_or_replace(index, rng, failed)
        return TrainSample(self.transform(img, rng), self.pids[index], self.camids[index], index, seed, failed)

    def _load_or_replace(self, index: int, rng: random.Random, failed: List[str]) -> Image.Image:
        try:
            return load_rgb(self.paths[index])
        except ImageReadError:
            failed.append(self.paths[index])
        others = [i for i in self._same_pid[self.pids[index]] if i != index]
        rng.shuffle(others)
        for other in others:
            try:
                return load_rgb(self.paths[other])
            except ImageReadError:
                failed.append(self.paths[other])
        height, width = self.transform.size
        return Image.new("RGB", (width, height), self.fill)


class TrainCollate:
    """Stack samples into a batch dict and apply :class:`RandomPatch` within each ``chunk_size`` group."""

    def __init__(self, random_patch: Optional[RandomPatch], chunk_size: int) -> None:
        self.random_patch = random_patch
        self.chunk_size = max(1, int(chunk_size))

    def __call__(self, samples: List[TrainSample]) -> Dict[str, Any]:
        images = [s.image for s in samples]
        if self.random_patch is not None:
            for lo in range(0, len(images), self.chunk_size):
                # the chunk's first slot seed drives the patch pool: same pixels for any worker layout
                rng = random.Random(samples[lo].seed ^ 0x9E3779B97F4A7C15)
                self.random_patch(images[lo : lo + self.chunk_size], rng)
        return {
            "images": torch.stack(images),
            "targets": torch.tensor([s.pid for s in samples], dtype=torch.long),
            "camids": torch.tensor([s.camid for s in samples], dtype=torch.long),
            "indices": torch.tensor([s.index for s in samples], dtype=torch.long),
            "failed": [p for s in samples for p in s.failed],
        }


def _seed_worker(worker_id: int) -> None:
    # Augmentation uses per-slot seeds; this only pins any other library RNG a transform might touch.
    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(
    paths: Sequence[PathLike],
    pids: Sequence[int],
    camids: Sequence[int],
    cfg: Config,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> Tuple[DataLoader, PKBatchSampler]:
    """The training DataLoader of one process and its sampler (call ``sampler.set_epoch`` each epoch).

    Every batch is a dict: ``images`` (N,3,H,W float 0..255), ``targets``, ``camids``, ``indices``
    (long) and ``failed`` (paths that could not be read). ``N = batch_size // world_size``.
    """
    chunks = max(1, int(cfg.solver.grad_accumulation))
    sampler = PKBatchSampler(
        pids,
        cfg.dataloader.batch_size,
        cfg.dataloader.num_instances,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        steps_per_epoch=cfg.dataloader.steps_per_epoch,
        chunks=chunks,
    )
    dataset = TrainImageDataset(paths, pids, camids, TrainTransform(cfg.input), cfg.input.pixel_mean)
    patch = RandomPatch(cfg.input.random_patch_prob) if cfg.input.random_patch_prob > 0 else None
    workers = max(0, int(cfg.dataloader.num_workers))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=TrainCollate(patch, sampler.per_rank // chunks),
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return loader, sampler


class ImageListDataset(Dataset):
    """Test-time images: ``(tensor, index, ok)``; an unreadable image gives a zero tensor and ``ok=False``."""

    def __init__(self, paths: Sequence[PathLike], input_cfg: InputConfig) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = build_test_transform(input_cfg)
        self.size = (int(input_cfg.size_test[0]), int(input_cfg.size_test[1]))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, bool]:
        try:
            return self.transform(load_rgb(self.paths[index])), index, True
        except ImageReadError:
            return torch.zeros(3, *self.size), index, False


def build_test_loader(
    paths: Sequence[PathLike],
    input_cfg: InputConfig,
    batch_size: int = 128,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Ordered batches ``(images, indices, ok)`` of ``paths`` with the test preprocessing of ``input_cfg``."""
    return DataLoader(
        ImageListDataset(paths, input_cfg),
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(0, int(num_workers)),
        pin_memory=pin_memory,
    )
