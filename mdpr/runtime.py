"""Where and how computation runs: devices, CPU cores and threads, model unwrapping, array helpers.

Every command resolves ``--device`` here, counts cores here (affinity and cgroup aware, also for
DDP worker counts and data-loader workers) and picks its torch thread count here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Tuple, Union

import numpy as np

from mdpr.errors import MdprError

if TYPE_CHECKING:
    import torch


# ------------------------------------------------------------------------------------------------ CPU


def _cgroup_cpu_limit() -> Optional[float]:
    """CPUs allowed by a cgroup quota (containers), or None when unlimited or unknown."""
    try:  # cgroup v2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = float(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = float(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cpu_count() -> int:
    """Cores this process may use: the CPU affinity mask, capped by a cgroup CPU quota; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, int(limit)))
    return max(1, cores)


def machine_is_busy(cores: Optional[int] = None) -> bool:
    """Whether the 1-minute load average already reaches the usable core count."""
    cores = cores or usable_cpu_count()
    try:
        return os.getloadavg()[0] >= cores
    except (AttributeError, OSError):  # no load average (Windows)
        return False


def choose_cpu_threads(requested: Optional[int] = None) -> Tuple[int, str]:
    """Torch CPU threads for a command, and why: ``requested``, else one per usable core, else one when the
    machine is already busy (1-minute load average at least the number of cores).

    Every multi-threaded operation ends by waiting for all its threads; when other processes keep the
    cores busy, a pre-empted thread stalls the others, and a model runs several times slower than on a
    single thread (docs/benchmarks.md).
    """
    if requested is not None:
        return int(requested), "requested"
    cores = usable_cpu_count()
    if cores > 1 and machine_is_busy(cores):
        return 1, "busy"
    return cores, "default"


def default_num_workers(device_type: str) -> int:
    """Image-decoding processes: enough to keep a GPU fed; on CPU one, since decoding is cheap next to the
    model and every extra process takes cores from the model's own threads."""
    cpus = usable_cpu_count()
    if device_type == "cpu":
        return 1 if cpus >= 2 else 0
    return max(1, min(8, cpus - 1))


def cap_num_workers(requested: int) -> int:
    """Data-loader workers capped at the usable cores (more only queue for the same cores)."""
    return max(0, min(int(requested), usable_cpu_count()))


# ------------------------------------------------------------------------------------------------ devices


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else MPS, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked
    to exist. One sentence (naming ``device``) for anything else."""
    import torch

    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise MdprError(f"Unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MdprError(f"Device '{device}' asks for CUDA but this machine has no usable GPU; use device cpu or auto.")
        if dev.index is not None and dev.index >= count:
            raise MdprError(f"Device '{device}' does not exist: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1}).")
    elif dev.type == "mps":
        if not _mps_available():
            raise MdprError(f"Device '{device}' asks for Apple MPS but it is not available here; use device cpu or auto.")
    elif dev.type != "cpu":
        raise MdprError(f"Device '{device}' is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return dev


# ------------------------------------------------------------------------------------------------ models


def unwrap_model(model: Any) -> Any:
    """The plain module inside DataParallel / DistributedDataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however they are nested."""
    import torch

    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


# ------------------------------------------------------------------------------------------------ arrays


def l2_normalize(features: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Row-wise L2 normalisation into float32 (zero rows stay zero), like torch's ``F.normalize``.

    Norms are accumulated in float64; ``inplace=True`` overwrites a float32 ``features`` (no second copy of a
    large matrix).
    """
    if inplace and not (isinstance(features, np.ndarray) and features.dtype == np.float32):
        raise TypeError("inplace L2 normalisation needs a float32 numpy array")
    x = features if inplace else np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (rows, dim) array, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    scale = (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)[:, None]
    if inplace:
        x *= scale
        return x
    return (x * scale).astype(np.float32, copy=False)


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Run the ``with`` block with exactly ``count`` torch intra-op threads (None: unchanged), restoring the
    previous count after it."""
    import torch

    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpu_threads(requested: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """Torch's CPU threads chosen by :func:`choose_cpu_threads` for the ``with`` block, restored after it
    (a Python caller's own setting survives the call); yields ``(threads, why)``, why "busy" when reduced
    to one because other processes keep the cores busy."""
    threads, why = choose_cpu_threads(requested)
    with torch_threads(threads):
        yield threads, why


def share_cpu_threads(workers: int) -> int:
    """Give this process its share of the usable cores when ``workers`` processes train on one CPU (so that
    together they do not oversubscribe it); returns the thread count set."""
    import torch

    threads = max(1, usable_cpu_count() // max(1, int(workers)))
    torch.set_num_threads(threads)
    return threads


def prefer_passive_openmp_wait() -> None:
    """Let OpenMP threads wait passively unless the user chose ``OMP_WAIT_POLICY``; effective only before torch
    is first imported.

    Spinning threads make CPU training several times slower as soon as other processes share the cores;
    passive waiting costs little on an idle machine.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _SignalStack:  # the C ``stack_t`` of sigaltstack(2)
    def __init__(self) -> None:
        import ctypes

        class StackT(ctypes.Structure):
            _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

        self.ctypes, self.StackT = ctypes, StackT
        self.libc = ctypes.CDLL(None)

    def get(self) -> Any:
        current = self.StackT()
        if self.libc.sigaltstack(None, self.ctypes.byref(current)) != 0:
            return None
        return current

    def set(self, stack: Any) -> None:
        self.libc.sigaltstack(self.ctypes.byref(stack), None)


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """The calling thread's alternate signal stack as it was before the ``with`` block, put back after it.

    OpenVINO's CPU plugin installs a signal stack of its own on the thread that compiles a model and puts
    back the one it found when its ``Core`` is destroyed; two runners destroyed in the order they were
    made leave the thread on freed memory, and the next signal handled there (a child process exiting
    while a SIGCHLD handler is installed, as torch's DataLoader installs one) kills the process.
    """
    if os.name != "posix":
        yield
        return
    try:
        stack = _SignalStack()
        before = stack.get()
    except (OSError, AttributeError):  # no sigaltstack in this C library
        yield
        return
    try:
        yield
    finally:
        if before is not None:
            stack.set(before)
