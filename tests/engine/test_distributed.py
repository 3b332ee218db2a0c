"""Leaving a process group: a finished trainer's DDP wrapper is freed first, so that the group's gloo
threads are joined while the interpreter is alive, not in its teardown."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from mdpr.engine.distributed import DistContext, cleanup, leave_together


def _wrapped_in_a_cycle() -> weakref.ref[nn.Module]:
    model = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    holder: dict = {"model": model}
    holder["self"] = holder  # a trainer and its hooks refer to each other the same way
    return weakref.ref(model)


def test_cleanup_frees_a_finished_ddp_before_destroying_the_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    gc.disable()  # only cleanup may collect here
    try:
        alive = _wrapped_in_a_cycle()
        assert alive() is not None
        cleanup()
        assert alive() is None and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_leave_together_leaves_even_when_alone(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        leave_together(DistContext(0, 1, 0, torch.device("cpu"), "gloo"))
        assert not dist.is_initialized()
        leave_together(None)  # no group: nothing to leave
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
