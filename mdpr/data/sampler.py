"""PK identity sampling: every step draws P identities and K images of each.

The sampler is a *batch* sampler over the whole run, deterministic in ``(seed, epoch)``:

* each epoch has a fixed number of steps (fast-reid's ``len(train) // batch_size``), so the schedule
  and checkpoints line up with epochs;
* the *global* batch of a step (``batch_size`` images over all processes) is the same whatever the
  number of processes; process ``rank`` takes the ``rank``-th contiguous slice of it, which holds
  whole identities, so ranks see disjoint identities in a step (as fast-reid's ``reorder_index``);
* every image slot comes with its own 63-bit augmentation seed, so the augmented pixels depend only on
  ``(seed, epoch, step, slot)``: not on the number of DataLoader workers, and not on whether the run
  was interrupted and resumed.

Within an epoch identities are drawn without replacement until fewer than P have K unused images
left, then a new round starts (fast-reid's ``NaiveIdentitySampler``; an identity with fewer than K
images is padded by drawing with replacement).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from mdpr.errors import MdprError

#: One image slot of a batch: (dataset index, augmentation seed).
Slot = Tuple[int, int]


class PKBatchSampler:
    """Yields, for each step of an epoch, this process's list of :data:`Slot` (``batch_size // world_size``).

    Args:
        pids: training class index of every dataset item (``Record.pid`` of the train split).
        batch_size: images per optimisation step over all processes (P x K).
        num_instances: K, images per identity in a step.
        seed: run seed; the epoch's draw uses ``(seed, epoch)``.
        rank, world_size: this process and the number of processes.
        steps_per_epoch: steps in an epoch; default ``max(1, len(pids) // batch_size)`` (fast-reid).
        chunks: further split of each process's share into this many identity-aligned chunks
            (gradient accumulation); only validated here.
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
    ) -> None:
        if num_instances < 1 or batch_size < 1:
            raise MdprError(
                f"dataloader.batch_size ({batch_size}) and dataloader.num_instances ({num_instances}) must be positive."
            )
        if batch_size % num_instances:
            raise MdprError(
                f"dataloader.batch_size ({batch_size}) must be a multiple of dataloader.num_instances ({num_instances})."
            )
        self.num_pids_per_batch = batch_size // num_instances
        parts = world_size * chunks
        if self.num_pids_per_batch % parts:
            raise MdprError(
                f"A batch of {batch_size} images holds {self.num_pids_per_batch} identities, which cannot be split "
                f"evenly over {world_size} process(es) x {chunks} chunk(s); choose dataloader.batch_size as a "
                f"multiple of {num_instances * parts}."
            )
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
        self.per_rank = batch_size // world_size
        self.steps_per_epoch = steps_per_epoch or max(1, len(pids) // batch_size)
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to draw; ``start_step`` skips the first steps (resuming mid-epoch)."""
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[List[Slot]]:
        lo = self.rank * self.per_rank
        for step, batch in enumerate(self.global_batches(self.epoch)):
            if step >= self.start_step:
                yield batch[lo : lo + self.per_rank]

    def global_batches(self, epoch: int) -> Iterator[List[Slot]]:
        """All steps of ``epoch`` as full (all-process) batches, identities contiguous, K slots each."""
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

    def state_dict(self) -> Dict[str, int]:
        """Everything that determines the draw (the draw itself is recomputed, never stored)."""
        return {"seed": self.seed, "epoch": self.epoch, "start_step": self.start_step,
                "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
                "num_instances": self.num_instances}
