"""PK sampler: identity structure, determinism per (seed, epoch), disjoint identities across ranks."""

from __future__ import annotations

from collections import Counter

import pytest

from mdpr.data.sampler import PKBatchSampler
from mdpr.errors import MdprError

# 10 identities with 1..10 images each (pid i has i + 1 images)
PIDS = [pid for pid in range(10) for _ in range(pid + 1)]


def _pids_of(batch):
    return [PIDS[i] for i, _ in batch]


def test_batches_hold_p_identities_with_k_images_each() -> None:
    sampler = PKBatchSampler(PIDS, batch_size=12, num_instances=3, seed=1)
    assert len(sampler) == len(PIDS) // 12
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 12
        pids = _pids_of(batch)
        counts = Counter(pids)
        assert len(counts) == 4 and set(counts.values()) == {3}
        # identities are contiguous (K slots each), which is what rank slicing relies on
        assert [pids[i] for i in range(0, 12, 3)] == list(dict.fromkeys(pids))
        # identities with enough images are sampled without replacement within a step
        for pid in counts:
            idx = [i for i, _ in batch if PIDS[i] == pid]
            if pid + 1 >= 3:
                assert len(set(idx)) == 3


def test_deterministic_per_seed_and_epoch() -> None:
    a = PKBatchSampler(PIDS, 12, 3, seed=5)
    b = PKBatchSampler(PIDS, 12, 3, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = PKBatchSampler(PIDS, 12, 3, seed=6)
    c.set_epoch(2)
    assert list(a) != list(c)
    seeds = [s for batch in a for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every slot has its own augmentation seed


def test_start_step_skips_exactly() -> None:
    s = PKBatchSampler(PIDS, 8, 2, seed=0, steps_per_epoch=5)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_step=3)
    assert len(s) == 2
    assert list(s) == full[3:]


def test_ranks_get_disjoint_identities_and_together_the_global_batch() -> None:
    one = PKBatchSampler(PIDS, 12, 3, seed=3, steps_per_epoch=4)
    ranks = [PKBatchSampler(PIDS, 12, 3, seed=3, rank=r, world_size=2, steps_per_epoch=4) for r in range(2)]
    for s in [one, *ranks]:
        s.set_epoch(7)
    for full, r0, r1 in zip(one, *ranks):
        assert len(r0) == len(r1) == 6
        assert r0 + r1 == full
        assert not set(_pids_of(r0)) & set(_pids_of(r1))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(batch_size=10, num_instances=4), "multiple of dataloader.num_instances"),
        (dict(batch_size=12, num_instances=4, world_size=2), "split evenly"),
        (dict(batch_size=48, num_instances=4), "needs 12"),
    ],
)
def test_bad_batch_geometry_is_one_clear_error(kwargs, fragment) -> None:
    with pytest.raises(MdprError, match=fragment):
        PKBatchSampler(PIDS, **kwargs)
