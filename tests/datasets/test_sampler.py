"""PK sampler: identity structure, determinism per (seed, epoch), the batch layout (processes x accumulation
steps), disjoint identities across processes and accumulation steps."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from mdpr.config import load_config
from mdpr.data.sampler import PKBatchSampler, ProcessStep, batch_layout, layout_for
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


# --------------------------------------------------------------------------------------------- batch layout

#: 40 identities with 20 images each: room for the paper's global batch of 16 identities x 16 images
PAPER_PIDS = [pid for pid in range(40) for _ in range(20)]


@pytest.mark.parametrize("processes, accumulation", [(1, 4), (2, 2), (4, 1)])
def test_paper_layout_on_any_number_of_processes(processes: int, accumulation: int) -> None:
    layout = batch_layout(256, 16, processes, process_batch=64)
    assert layout.as_dict() == {"processes": processes, "accumulation_steps": accumulation, "global_batch": 256,
                                "images_per_process_step": 64, "identities_per_process_step": 4}
    assert layout.identities_per_update == 16 and layout.parts == 4 and layout.chunks_per_update == accumulation
    assert layout.updates_per_epoch(12936) == 50  # Market-1501 at 256: 50 updates per epoch whatever N is
    cfg = load_config("market1501")
    assert layout_for(cfg, processes) == layout


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_processes_and_accumulation_steps_get_disjoint_identities(processes: int) -> None:
    samplers = [PKBatchSampler(PAPER_PIDS, 256, 16, seed=4, rank=r, world_size=processes, process_batch=64,
                               steps_per_epoch=3) for r in range(processes)]
    reference = PKBatchSampler(PAPER_PIDS, 256, 16, seed=4, steps_per_epoch=3)
    for s in [*samplers, reference]:
        s.set_epoch(2)
    accumulation = 4 // processes
    per_rank = [list(s) for s in samplers]
    assert all(len(steps) == 3 * accumulation == len(s) for steps, s in zip(per_rank, samplers))
    assert samplers[0].process_steps_per_epoch == 3 * accumulation and samplers[0].steps_per_epoch == 3
    for update, full in enumerate(reference):  # one step of 256 (no accumulation, one process)
        steps = [per_rank[r][update * accumulation + a] for r in range(processes) for a in range(accumulation)]
        assert [slot for step in steps for slot in step] == full  # the same global batch, split in order
        identity_sets = [set(_pids_of_paper(step)) for step in steps]
        assert all(len(step) == 64 and len(ids) == 4 for step, ids in zip(steps, identity_sets))
        assert len(set().union(*identity_sets)) == 16  # pairwise disjoint
        for r in range(processes):
            for a in range(accumulation):
                step = per_rank[r][update * accumulation + a]
                assert (step.epoch, step.step, step.part) == (2, update * accumulation + a, r * accumulation + a)
                assert samplers[r].process_step(2, step.step) == step


def _pids_of_paper(batch):
    return [PAPER_PIDS[i] for i, _ in batch]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (dict(batch_size=256, num_instances=16, processes=3, process_batch=64),
         ["cannot be split over 3 process(es) in steps of 64", "dataloader.batch_size=192 or 384", "1, 2 or 4"]),
        (dict(batch_size=256, num_instances=16, processes=8, process_batch=64),
         ["over 8 process(es)", "dataloader.batch_size=512"]),
        (dict(batch_size=256, num_instances=16, processes=1, process_batch=40), ["multiple of dataloader.num_instances"]),
        (dict(batch_size=48, num_instances=16, processes=2), ["3 identities", "multiple of 32"]),
    ],
)
def test_layouts_that_do_not_divide_name_the_nearest_valid_settings(args, fragments) -> None:
    with pytest.raises(MdprError) as info:
        batch_layout(**args)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    for fragment in fragments:
        assert fragment in message, message


def test_process_steps_are_picklable_with_their_position() -> None:
    step = ProcessStep([(1, 2), (3, 4)], epoch=5, step=6, part=7, chunks=1)
    copy = pickle.loads(pickle.dumps(step))
    assert copy == [(1, 2), (3, 4)] and (copy.epoch, copy.step, copy.part, copy.chunks) == (5, 6, 7, 1)


def test_recipes_carry_the_paper_batch_layout() -> None:
    for name in ("dukemtmc", "market1501", "synergyreid"):
        d = load_config(name).dataloader
        assert (d.batch_size, d.process_batch, d.num_instances) == (256, 64, 16), name
    demo = load_config("demo-cpu")
    assert layout_for(demo, 1).as_dict() == {"processes": 1, "accumulation_steps": 1, "global_batch": 16,
                                             "images_per_process_step": 16, "identities_per_process_step": 4}
    assert layout_for(demo, 2).images_per_process_step == 8  # demo-cpu keeps its meaning: 16 over all processes
