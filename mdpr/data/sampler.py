"""PK identity sampling and the batch layout: every optimizer update draws P identities and K images of each.

Vocabulary (the names the trainer and the run plan use):

* the **global batch** (``dataloader.batch_size``, fast-reid's ``IMS_PER_BATCH``) is what one
  optimizer update sees over all processes; the paper's is 256 = 16 identities x 16 images;
* a **process step** (``dataloader.process_batch``, 0 = ``batch_size / processes``) is one
  forward/backward pass of one process: BatchNorm statistics and triplet mining see its images only;
  the paper's is 64 = 4 identities x 16 (4 GPUs);
* with N processes every update accumulates ``A = batch_size / (N * process_batch)`` process steps per
  process (N = 1: 4, N = 2: 2, N = 4: 1 for the paper). :func:`batch_layout` computes this and refuses
  layouts that do not divide, naming the nearest valid settings.

The global batch of an update is split into ``N * A`` parts of whole identities; process ``rank`` takes
parts ``rank * A .. rank * A + A - 1``, one per accumulation step, so every process and every
accumulation step of an update sees its own, disjoint identities (as fast-reid's ``reorder_index``
gives each GPU its own). The draw does not depend on N or A: the same seed gives the same global
batches for any layout, only their split differs.

The sampler is a *batch* sampler over the whole run, deterministic in ``(seed, epoch)``:

* each epoch has a fixed number of updates (fast-reid's ``len(train) // batch_size``), so the schedule
  and checkpoints line up with epochs; it yields ``A`` process steps per update;
* every image slot comes with its own 63-bit augmentation seed, so the augmented pixels depend only on
  ``(seed, epoch, update, slot)``: not on whether the run was interrupted and resumed;
* each yielded :class:`ProcessStep` says where it sits (epoch, process step, part), which the patch
  pool of :mod:`mdpr.data.loader` needs to stay reproducible.

Within an epoch identities are drawn without replacement until fewer than P have K unused images
left, then a new round starts (fast-reid's ``NaiveIdentitySampler``; an identity with fewer than K
images is padded by drawing with replacement).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mdpr.config import Config
from mdpr.errors import MdprError

#: One image slot of a batch: (dataset index, augmentation seed).
Slot = Tuple[int, int]


class ProcessStep(List[Slot]):
    """The slots of one process step (a plain list of :data:`Slot`) and where it sits in the run.

    ``step`` counts process steps within the epoch (``update * accumulation_steps + a``); ``part`` is
    the index, within the update's global batch, of the first of its ``chunks`` identity-aligned parts.
    """

    epoch: int
    step: int
    part: int
    chunks: int

    def __init__(self, slots: Iterable[Slot] = (), epoch: int = 0, step: int = 0, part: int = 0, chunks: int = 1) -> None:
        super().__init__(slots)
        self.epoch, self.step, self.part, self.chunks = int(epoch), int(step), int(part), int(chunks)


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer update is laid out over processes and accumulation steps."""

    processes: int
    accumulation_steps: int  #: process steps per process per optimizer update
    global_batch: int  #: images per optimizer update over all processes
    images_per_process_step: int
    identities_per_process_step: int
    num_instances: int  #: K, images per identity
    chunks: int = 1  #: further identity-aligned split of each process step (legacy solver.grad_accumulation)

    @property
    def identities_per_update(self) -> int:
        return self.global_batch // self.num_instances

    @property
    def parts(self) -> int:
        """Identity-disjoint parts of the global batch: processes x accumulation steps x chunks."""
        return self.processes * self.accumulation_steps * self.chunks

    @property
    def chunks_per_update(self) -> int:
        """Forward/backward passes of one process per update (what the trainer accumulates)."""
        return self.accumulation_steps * self.chunks

    def updates_per_epoch(self, num_images: int, steps_per_epoch: int = 0) -> int:
        """Optimizer updates per epoch: ``steps_per_epoch``, or fast-reid's ``len(train) // batch_size``."""
        return int(steps_per_epoch) or max(1, int(num_images) // self.global_batch)

    def as_dict(self) -> Dict[str, int]:
        return {"processes": self.processes, "accumulation_steps": self.accumulation_steps,
                "global_batch": self.global_batch, "images_per_process_step": self.images_per_process_step,
                "identities_per_process_step": self.identities_per_process_step}


def batch_layout(
    batch_size: int,
    num_instances: int,
    processes: int = 1,
    process_batch: int = 0,
    chunks: int = 1,
) -> BatchLayout:
    """The layout of a global batch of ``batch_size`` images on ``processes`` processes (one MdprError
    sentence, with the nearest valid settings, when it cannot be split into whole identities)."""
    k, n = int(num_instances), int(processes)
    if batch_size < 1 or k < 1 or n < 1:
        raise MdprError(
            f"dataloader.batch_size ({batch_size}), dataloader.num_instances ({k}) and the number of processes "
            f"({n}) must be positive."
        )
    if batch_size % k:
        raise MdprError(
            f"dataloader.batch_size ({batch_size}) must be a multiple of dataloader.num_instances ({k})."
        )
    if process_batch:
        step = int(process_batch)
        if step % k:
            raise MdprError(
                f"dataloader.process_batch ({step}) must be a multiple of dataloader.num_instances ({k})."
            )
        if batch_size % (n * step):
            fits = [p for p in range(1, batch_size // step + 1) if (batch_size // step) % p == 0]
            raise MdprError(
                f"A global batch of {batch_size} images (dataloader.batch_size) cannot be split over {n} "
                f"process(es) in steps of {step} images (dataloader.process_batch); with {n} process(es) use "
                f"dataloader.batch_size={_multiples_near(batch_size, n * step)}, or run "
                f"{_or_list(fits)} process(es)."
            )
        accumulation = batch_size // (n * step)
    else:
        identities = batch_size // k
        if identities % (n * chunks):
            raise MdprError(
                f"A batch of {batch_size} images holds {identities} identities, which cannot be split evenly over "
                f"{n} process(es) x {chunks} chunk(s); choose dataloader.batch_size as a multiple of "
                f"{k * n * chunks} (e.g. {_multiples_near(batch_size, k * n * chunks)})."
            )
        step, accumulation = batch_size // n, 1
    if (step // k) % chunks:
        raise MdprError(
            f"A process step of {step} images holds {step // k} identities, which solver.grad_accumulation "
            f"({chunks}) cannot split into equal chunks."
        )
    return BatchLayout(n, accumulation, int(batch_size), step, step // k, k, int(chunks))


def layout_for(cfg: Config, processes: int = 1) -> BatchLayout:
    """:func:`batch_layout` of a config's ``dataloader`` section on ``processes`` processes."""
    d = cfg.dataloader
    return batch_layout(d.batch_size, d.num_instances, processes, d.process_batch, cfg.solver.grad_accumulation)


def _multiples_near(value: int, unit: int) -> str:
    below = value // unit * unit
    above = below + unit
    return f"{below} or {above}" if below >= unit else str(above)


def _or_list(values: Sequence[int]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


class PKBatchSampler:
    """Yields this process's :class:`ProcessStep` s, ``accumulation_steps`` per optimizer update.

    Args:
        pids: training class index of every dataset item (``Record.pid`` of the train split).
        batch_size: images per optimizer update over all processes (P x K).
        num_instances: K, images per identity.
        seed: run seed; the epoch's draw uses ``(seed, epoch)``.
        rank, world_size: this process and the number of processes.
        steps_per_epoch: optimizer updates in an epoch; default ``max(1, len(pids) // batch_size)`` (fast-reid).
        chunks: further split of each process step into this many identity-aligned chunks (the legacy
            ``solver.grad_accumulation``; the trainer splits, the sampler validates).
        process_batch: images per process step; 0 = ``batch_size // world_size`` (no accumulation).
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int = 0,
        chunks: int = 1,
        process_batch: int = 0,
    ) -> None:
        self.layout = batch_layout(batch_size, num_instances, world_size, process_batch, chunks)
        self.num_pids_per_batch = self.layout.identities_per_update
        index_by_pid: Dict[int, List[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            index_by_pid[int(pid)].append(index)
        self.index_by_pid = dict(index_by_pid)
        self.pids = sorted(self.index_by_pid)
        if len(self.pids) < self.num_pids_per_batch:
            raise MdprError(
                f"The training split has {len(self.pids)} identities but a batch needs {self.num_pids_per_batch} "
                f"(batch_size {batch_size} / num_instances {num_instances}); lower dataloader.batch_size or "
                f"dataloader.num_instances."
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.accumulation_steps = self.layout.accumulation_steps
        self.chunks = self.layout.chunks
        #: images of one yielded process step
        self.per_rank = self.layout.images_per_process_step
        #: optimizer updates per epoch
        self.steps_per_epoch = self.layout.updates_per_epoch(len(pids), steps_per_epoch)
        self.epoch = 0
        self.start_step = 0
        self._cached: Optional[Tuple[int, List[List[Slot]]]] = None

    @property
    def process_steps_per_epoch(self) -> int:
        """Process steps (DataLoader batches) per epoch: ``steps_per_epoch * accumulation_steps``."""
        return self.steps_per_epoch * self.accumulation_steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to draw; ``start_step`` skips the first optimizer updates (resuming mid-epoch)."""
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def __len__(self) -> int:
        """Process steps left in the selected epoch."""
        return (self.steps_per_epoch - self.start_step) * self.accumulation_steps

    def __iter__(self) -> Iterator[ProcessStep]:
        for update, batch in enumerate(self.global_batches(self.epoch)):
            if update >= self.start_step:
                for a in range(self.accumulation_steps):
                    yield self._slice(batch, self.epoch, update, a)

    def process_step(self, epoch: int, step: int) -> ProcessStep:
        """This process's ``step``-th process step of ``epoch`` (recomputed from the seed; the last epoch
        drawn is cached)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, list(self.global_batches(epoch)))
        update, a = divmod(step, self.accumulation_steps)
        return self._slice(self._cached[1][update], epoch, update, a)

    def _slice(self, batch: List[Slot], epoch: int, update: int, a: int) -> ProcessStep:
        part = self.rank * self.accumulation_steps + a
        lo = part * self.per_rank
        return ProcessStep(batch[lo : lo + self.per_rank], epoch, update * self.accumulation_steps + a,
                           part * self.chunks, self.chunks)

    def global_batches(self, epoch: int) -> Iterator[List[Slot]]:
        """All updates of ``epoch`` as full (all-process) batches, identities contiguous, K slots each."""
        rng = np.random.default_rng([self.seed, int(epoch), 0x5EED])
        k = self.num_instances
        available: List[int] = []
        pools: Dict[int, List[int]] = {}
        for _ in range(self.steps_per_epoch):
            if len(available) < self.num_pids_per_batch:
                available, pools = self._new_round(rng)
            chosen = rng.choice(len(available), self.num_pids_per_batch, replace=False)
            picked = [available[i] for i in chosen]
            indices: List[int] = []
            for pid in picked:
                pool = pools[pid]
                indices.extend(pool[:k])
                del pool[:k]
            exhausted = {pid for pid in picked if len(pools[pid]) < k}
            if exhausted:
                available = [pid for pid in available if pid not in exhausted]
            seeds = rng.integers(0, 2**63 - 1, size=len(indices), dtype=np.int64)
            yield [(int(i), int(s)) for i, s in zip(indices, seeds)]

    def _new_round(self, rng: np.random.Generator) -> Tuple[List[int], Dict[int, List[int]]]:
        pools: Dict[int, List[int]] = {}
        for pid in self.pids:
            idxs = self.index_by_pid[pid]
            if len(idxs) < self.num_instances:
                pool = rng.choice(idxs, size=self.num_instances, replace=True).tolist()
            else:
                pool = rng.permutation(idxs).tolist()
            pools[pid] = [int(i) for i in pool]
        return list(self.pids), pools

    def state_dict(self) -> Dict[str, Any]:
        """Everything that determines the draw (the draw itself is recomputed, never stored)."""
        return {"seed": self.seed, "epoch": self.epoch, "start_step": self.start_step,
                "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
                "num_instances": self.num_instances, "process_batch": self.per_rank,
                "accumulation_steps": self.accumulation_steps}
