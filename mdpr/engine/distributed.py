"""Process groups for DistributedDataParallel: join ``torchrun``'s, or spawn N local workers.

* Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment) the process joins
  that group (NCCL on GPU, gloo on CPU); this is how multi-node training runs.
* Otherwise :func:`launch` starts ``nprocs`` workers on this machine (``--gpus N``: NCCL, one GPU each;
  ``--procs N``: gloo on CPU) that rendezvous on a free local port.

A worker's :class:`~mdpr.errors.MdprError` comes back to the launching process as the same one-sentence
error; any other failure keeps its traceback.
"""

from __future__ import annotations

import datetime
import gc
import os
import pickle
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_bytes
from mdpr.runtime import share_cpu_threads, usable_cpu_count

#: Generous: rank 0 may evaluate a large test set while the others wait at a barrier.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class DistContext:
    """Where this process stands: rank, world size, its device and the backend (None = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process arrives (a no-op in a single process)."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over all processes (returns a new tensor; the input is left alone)."""
        out = tensor.detach().clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            out /= self.world_size
        return out

    def all_gather_object(self, obj: Any) -> List[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def torchrun_env() -> Optional[dict]:
    """``{"rank", "world_size", "local_rank"}`` when started by torchrun (or any env:// launcher)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {
            "rank": int(os.environ["RANK"]),
            "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        }
    return None


def plan_processes(gpus: Optional[int], procs: Optional[int], device: str = "auto") -> tuple:
    """Validate ``gpus`` / ``procs`` / ``device``: returns ``(nprocs, backend, device_type)``.

    ``backend`` is None for a single process. Raises a one-sentence MdprError for impossible requests.
    """
    if gpus is not None and procs is not None:
        raise MdprError("Use either gpus N (one process per GPU) or procs N (CPU processes), not both.",
                        keys=["gpus N", "procs N"])
    if gpus is not None:
        if gpus < 1:
            raise MdprError(f"gpus must be at least 1, got {gpus}.", keys=["gpus"])
        if device not in ("auto", "cuda"):
            raise MdprError(f"gpus {gpus} runs on CUDA devices, not on the device {device}; leave the device at auto, "
                            "or use procs N on the CPU.", keys=["gpus", "procs N"])
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available < gpus:
            raise MdprError(
                f"gpus {gpus} needs {gpus} CUDA GPU(s) but this machine has {available}; "
                f"use gpus {available} or, without GPUs, procs N to run N CPU processes."
                if available
                else f"gpus {gpus} needs {gpus} CUDA GPU(s) but this machine has none; "
                f"drop gpus to train on the CPU, or use procs {gpus} for {gpus} CPU processes.",
                keys=["gpus", "procs N", "procs"],
            )
        return gpus, ("nccl" if gpus > 1 else None), "cuda"
    if procs is not None:
        if procs < 1:
            raise MdprError(f"procs must be at least 1, got {procs}.", keys=["procs"])
        if device not in ("auto", "cpu"):
            raise MdprError(f"procs runs CPU processes, not on the device {device}; use gpus N for CUDA.",
                            keys=["procs", "gpus N"])
        return procs, ("gloo" if procs > 1 else None), "cpu"
    return 1, None, None


def init_from_torchrun(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment variables."""
    env = torchrun_env()
    if env is None:
        raise MdprError("Not started by torchrun: RANK and WORLD_SIZE are not set.")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env["local_rank"])
        dev = torch.device("cuda", env["local_rank"])
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if env["world_size"] > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(env["rank"], env["world_size"], env["local_rank"], dev, backend if env["world_size"] > 1 else None)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cleanup() -> None:
    """Leave the process group (safe to call when none exists)."""
    if dist.is_available() and dist.is_initialized():
        # A finished trainer is garbage in a reference cycle (it and its hooks) that still holds DDP and,
        # through DDP's reducer, the process group: collected first, the group's last reference goes with
        # destroy_process_group, and its threads are joined now rather than in the interpreter's teardown.
        gc.collect()
        dist.destroy_process_group()


def leave_together(ctx: Optional[DistContext]) -> None:
    """Leave the process group once every process has finished (the way out of a run that succeeded).

    Rank 0 ends a run with work of its own (the summary, the final checkpoint): without the barrier the
    other ranks would tear their gloo connections down and exit while rank 0 still holds the group open.
    A failed process leaves at once (:func:`cleanup`), so its peers' barrier fails rather than waits.
    """
    try:
        if ctx is not None and ctx.distributed:
            ctx.barrier()
    finally:
        cleanup()


def _worker_entry(
    index: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    device_type: str,
    error_dir: str,
    args: Sequence[Any],
) -> None:
    if device_type == "cuda":
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
        share_cpu_threads(world_size)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT
    )
    ctx = DistContext(index, world_size, index, dev, backend)
    try:
        fn(ctx, *args)
    except MdprError as exc:
        cleanup()
        atomic_write_bytes(Path(error_dir, f"rank{index}.err"), pickle.dumps(str(exc)))
        raise SystemExit(2) from None
    except BaseException:
        cleanup()
        raise
    leave_together(ctx)


def launch(fn: Callable[..., Any], nprocs: int, backend: str, device_type: str, args: Sequence[Any] = ()) -> None:
    """Run ``fn(ctx: DistContext, *args)`` in ``nprocs`` fresh processes forming one process group.

    ``fn`` and ``args`` must be picklable (a module-level function). Blocks until all workers finish.
    """
    import torch.multiprocessing as mp

    port = find_free_port()
    with tempfile.TemporaryDirectory(prefix="mdpr-dist-") as error_dir:
        try:
            mp.start_processes(
                _worker_entry,
                args=(fn, nprocs, port, backend, device_type, error_dir, tuple(args)),
                nprocs=nprocs,
                join=True,
                start_method="spawn",
            )
        except mp.ProcessExitedException as exc:
            messages = sorted(Path(error_dir).glob("rank*.err"))
            if messages:
                raise MdprError(pickle.loads(messages[0].read_bytes())) from None
            raise RuntimeError(f"A training worker died: {exc}") from exc


@dataclass
class LaunchPlan:
    """How a job runs: joined to torchrun's process group, spawned as N local workers, or one process."""

    mode: str  #: "torchrun", "spawn" or "single"
    nprocs: int
    backend: Optional[str]
    device: str  #: the device (type) every process uses: "cuda", "cpu" or the user's ``--device``
    ctx: Optional[DistContext] = None  #: set in torchrun mode (this process's place in the group)

    @property
    def is_main(self) -> bool:
        return self.ctx is None or self.ctx.is_main


def plan_launch(gpus: Optional[int], procs: Optional[int], device: str = "auto") -> LaunchPlan:
    """Validate ``gpus`` / ``procs`` / ``device`` (before any process starts) and choose the launch mode;
    under torchrun, join its process group."""
    if torchrun_env() is not None:
        ctx = init_from_torchrun(device)
        return LaunchPlan("torchrun", ctx.world_size, ctx.backend, ctx.device.type, ctx)
    if procs is not None and procs > usable_cpu_count():
        raise MdprError(f"procs {procs} asks for more processes than this machine's {usable_cpu_count()} usable "
                        f"CPU core(s); use procs {usable_cpu_count()} or fewer.", keys=["procs"])
    nprocs, backend, device_type = plan_processes(gpus, procs, device)
    return LaunchPlan("spawn" if nprocs > 1 else "single", nprocs, backend, device_type or device)


def share_from_main(plan: LaunchPlan, compute: Callable[[], Any]) -> Any:
    """``compute()`` on the main process, its result (or its MdprError) shared with every process of the group."""
    if plan.ctx is None or plan.ctx.world_size == 1:
        return compute()
    value: Any = None
    if plan.ctx.is_main:
        try:
            value = compute()
        except MdprError as exc:
            value = exc
    value = plan.ctx.broadcast_object(value if not isinstance(value, MdprError) else ("__mdpr_error__", str(value)))
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__mdpr_error__":
        raise MdprError(value[1])
    return value


def run_planned(plan: LaunchPlan, fn: Callable[..., Any], args: Sequence[Any] = ()) -> Any:
    """Run ``fn(ctx, *args)`` as ``plan`` says; returns the main process's result (None for spawned workers,
    whose results the caller reads from files)."""
    if plan.mode == "torchrun":
        try:
            result = fn(plan.ctx, *args)
        except BaseException:
            cleanup()
            raise
        leave_together(plan.ctx)
        return result
    if plan.mode == "spawn":
        launch(fn, plan.nprocs, plan.backend or "gloo", plan.device, args)
        return None
    return fn(None, *args)
