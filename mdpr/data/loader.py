"""The training DataLoader: PK batches, seeded augmentation (test-time loading is :mod:`mdpr.inference`).

Image loading never crashes a run: an unreadable training image is replaced by another image of the
same identity (chosen from the slot's seed, so the replacement is reproducible), or by a mean-colour
image when none of that identity's images can be read, and reported in the batch's ``failed`` list so
the trainer counts it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mdpr.config import Config
from mdpr.data.images import ImageReadError, load_rgb
from mdpr.data.sampler import PKBatchSampler, ProcessStep, Slot
from mdpr.data.transforms import PatchPool, RandomPatch, TrainTransform
from mdpr.runtime import cap_num_workers

PathLike = Union[str, Path]


@dataclass
class TrainSample:
    image: torch.Tensor
    pid: int
    camid: int
    index: int
    seed: int
    failed: List[str]  #: paths that could not be read while producing this sample
    #: where the sample's process step sits: (epoch, process step, first part, chunks); None outside the sampler
    position: Optional[Tuple[int, int, int, int]] = None


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

    def __getitems__(self, slots: Sequence[Slot]) -> List[TrainSample]:
        """A whole batch (the DataLoader's batched fetch): also records where a :class:`ProcessStep` sits."""
        samples = [self[slot] for slot in slots]
        if isinstance(slots, ProcessStep):
            position = (slots.epoch, slots.step, slots.part, slots.chunks)
            for sample in samples:
                sample.position = position
        return samples

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


#: decorrelates an image's patch draws from its augmentation draws (both come from the slot seed)
_PATCH_SALT = 0x9E3779B97F4A7C15


class TrainCollate:
    """Stack samples into a batch dict, applying :class:`RandomPatch` with fast-reid's rolling pool.

    **The pool, as the official one and reproducible.** fast-reid keeps one pool of the last 1000
    patches per DataLoader worker, across batches and epochs. Here each worker (or the main process
    when ``num_workers`` is 0) keeps one pool per *stream* and part: the DataLoader hands process step
    ``t`` of every epoch to worker ``t % num_workers`` (round robin, restarted at worker 0 each epoch),
    so stream ``t % num_workers`` is exactly what one worker sees, and each identity-disjoint part of the
    global batch (process x accumulation step x chunk) has its own pool, as each GPU process of the
    official run has its own workers. The pool before a process step is therefore a pure function of
    the run's seed and the step's position: the patches of the earlier steps of its stream, newest
    ``random_patch_pool`` of them, each cut (by its image's own seed) from its image before that image
    received an occluder. When the worker's previous step is not the stream's predecessor (a resumed
    run, a fresh worker, another worker count), the pool is rebuilt by recomputing those images, so an
    interrupted and resumed run sees the same pools, and so the same pixels, as an uninterrupted one
    (about ``random_patch_pool`` image reads per worker, once).
    """

    def __init__(
        self,
        random_patch: Optional[RandomPatch],
        chunk_size: int = 0,
        dataset: Optional[TrainImageDataset] = None,
        sampler: Optional[PKBatchSampler] = None,
    ) -> None:
        self.random_patch = random_patch
        self.chunk_size = max(0, int(chunk_size))  # kept for callers without a sampler (0 = the whole batch)
        self.dataset = dataset
        self.sampler = sampler
        #: (stream, part) -> ((epoch, step) of the last process step applied, pool)
        self._pools: Dict[Tuple[int, int], Tuple[Tuple[int, int], PatchPool]] = {}

    def __call__(self, samples: List[TrainSample]) -> Dict[str, Any]:
        images = [s.image for s in samples]
        sources = [-1] * len(samples)
        if self.random_patch is not None and samples:
            position = samples[0].position
            chunks = position[3] if position is not None else max(1, len(samples) // (self.chunk_size or len(samples)))
            size = len(samples) // chunks
            for c in range(chunks):
                pool = self._pool(position, c)
                for i in range(c * size, (c + 1) * size):
                    rng = random.Random(samples[i].seed ^ _PATCH_SALT)
                    sources[i] = self.random_patch.apply(images[i], pool, rng, samples[i].index)
        return {
            "images": torch.stack(images),
            "targets": torch.tensor([s.pid for s in samples], dtype=torch.long),
            "camids": torch.tensor([s.camid for s in samples], dtype=torch.long),
            "indices": torch.tensor([s.index for s in samples], dtype=torch.long),
            "patch_sources": torch.tensor(sources, dtype=torch.long),
            "failed": [p for s in samples for p in s.failed],
        }

    # -- the pools -----------------------------------------------------------------------------------

    def _pool(self, position: Optional[Tuple[int, int, int, int]], chunk: int) -> PatchPool:
        assert self.random_patch is not None
        if position is None or self.sampler is None or self.dataset is None:
            return self.random_patch.new_pool()  # no position: a pool of this batch only
        epoch, step, part, _ = position
        period = self._period()
        key = (step % period, part + chunk)
        before = self._predecessor(epoch, step)
        state = self._pools.get(key)
        if state is not None and state[0] == before:
            pool = state[1]
        elif before is None:
            pool = self.random_patch.new_pool()
        else:
            pool = self._rebuild(epoch, step, chunk)
        self._pools[key] = ((epoch, step), pool)
        return pool

    def _period(self) -> int:
        """Process steps between two steps of one stream and accumulation index: lcm(workers, A)."""
        assert self.sampler is not None
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        return math.lcm(max(1, workers), self.sampler.accumulation_steps)

    def _predecessor(self, epoch: int, step: int) -> Optional[Tuple[int, int]]:
        """The stream's process step before ``(epoch, step)``, or None at the start of the run."""
        assert self.sampler is not None
        period = self._period()
        if step >= period:
            return epoch, step - period
        last = self.sampler.process_steps_per_epoch - 1
        if epoch == 0 or last < step:
            return None
        return epoch - 1, step + (last - step) // period * period

    def _rebuild(self, epoch: int, step: int, chunk: int) -> PatchPool:
        """The pool of ``(epoch, step)``'s stream recomputed from the images of its earlier steps."""
        assert self.random_patch is not None and self.sampler is not None and self.dataset is not None
        newest_first: List[List[Tuple[torch.Tensor, int]]] = []
        count, at = 0, self._predecessor(epoch, step)
        while at is not None and count < self.random_patch.pool_size:
            slots = self.sampler.process_step(*at)
            size = len(slots) // slots.chunks
            patches = []
            for index, seed in slots[chunk * size : (chunk + 1) * size]:
                patch = self.random_patch.cut(self.dataset[(index, seed)].image, random.Random(seed ^ _PATCH_SALT))
                if patch is not None:
                    patches.append((patch, index))
            newest_first.append(patches)
            count += len(patches)
            at = self._predecessor(*at)
        pool = self.random_patch.new_pool()
        for patches in reversed(newest_first):
            for patch, index in patches:
                pool.append(patch, index)
        return pool


class UpdateLoader:
    """Iterates a training DataLoader by optimizer update: the ``accumulation_steps`` process steps of an
    update concatenated into one batch dict (identities in contiguous, identity-aligned parts of
    ``images_per_process_step``), so a trainer splits it into ``sampler.layout.chunks_per_update``
    forward/backward passes. ``process_steps`` is the underlying per-process-step DataLoader."""

    def __init__(self, process_steps: DataLoader, sampler: PKBatchSampler) -> None:
        self.process_steps = process_steps
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler) // self.sampler.accumulation_steps

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        steps = self.sampler.accumulation_steps
        if steps == 1:
            yield from self.process_steps
            return
        group: List[Dict[str, Any]] = []
        for batch in self.process_steps:
            group.append(batch)
            if len(group) == steps:
                yield {key: ([p for b in group for p in b[key]] if key == "failed" else torch.cat([b[key] for b in group]))
                       for key in group[0]}
                group = []


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
) -> Tuple[UpdateLoader, PKBatchSampler]:
    """The training batches of one process, by optimizer update, and its sampler (call
    ``sampler.set_epoch`` each epoch).

    Every batch is a dict: ``images`` (N,3,H,W float 0..255), ``targets``, ``camids``, ``indices``,
    ``patch_sources`` (dataset index each image's random patch was cut from, -1 for none; long) and
    ``failed`` (paths that could not be read). ``N = sampler.layout.chunks_per_update x`` the images of
    one chunk: the update's process steps (``dataloader.process_batch`` images each) one after another.
    """
    sampler = PKBatchSampler(
        pids,
        cfg.dataloader.batch_size,
        cfg.dataloader.num_instances,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        steps_per_epoch=cfg.dataloader.steps_per_epoch,
        chunks=cfg.solver.grad_accumulation,
        process_batch=cfg.dataloader.process_batch,
    )
    dataset = TrainImageDataset(paths, pids, camids, TrainTransform(cfg.input), cfg.input.pixel_mean)
    patch = (RandomPatch(cfg.input.random_patch_prob, cfg.input.random_patch_pool, cfg.input.random_patch_min_pool)
             if cfg.input.random_patch_prob > 0 else None)
    workers = cap_num_workers(cfg.dataloader.num_workers)  # more than the usable cores only queue for them
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=TrainCollate(patch, dataset=dataset, sampler=sampler),
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if workers else None,
        # the patch pools live in the workers: they must persist across epochs (as fast-reid's)
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return UpdateLoader(loader, sampler), sampler

