"""mdpr.runtime: cores, the CPU-thread policy and L2 normalisation (devices: tests/workflows/test_one_home.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mdpr.runtime as runtime


def test_torch_threads_sets_and_restores_even_on_error() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with runtime.torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), runtime.torch_threads(target):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with runtime.torch_threads(None):
        assert torch.get_num_threads() == before


def test_cpu_threads_is_one_on_a_busy_machine_unless_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "usable_cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "machine_is_busy", lambda cores=None: True)
    assert runtime.choose_cpu_threads() == (1, "busy")
    assert runtime.choose_cpu_threads(2) == (2, "requested")
    monkeypatch.setattr(runtime, "machine_is_busy", lambda cores=None: False)
    before = torch.get_num_threads()
    with runtime.cpu_threads() as (threads, why):
        assert (threads, why) == (2, "default") and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_ddp_workers_share_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "usable_cpu_count", lambda: 8)
    try:
        assert runtime.share_cpu_threads(4) == 2 and torch.get_num_threads() == 2
        assert runtime.share_cpu_threads(16) == 1  # never zero threads
    finally:
        torch.set_num_threads(before)


def test_usable_cores_follow_a_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 1.5)
    assert runtime.usable_cpu_count() == 1
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: None)
    assert runtime.usable_cpu_count() >= 1


def test_l2_normalize_keeps_zero_rows_and_refuses_an_inplace_copy() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    out = runtime.l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    with pytest.raises(TypeError):
        runtime.l2_normalize(x, inplace=True)
    y = x.astype(np.float32)
    assert runtime.l2_normalize(y, inplace=True) is y


def test_passive_openmp_wait_is_a_default_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.prefer_passive_openmp_wait()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    runtime.prefer_passive_openmp_wait()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
