"""`mdpr extract` survives being killed: SIGKILL and Ctrl-C mid-run, then the same command completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from storekit import make_crops, tiny_checkpoint

from mdpr.inference import FeatureExtractor
from mdpr.store import FeatureStore, journal_path_for

N_IMAGES = 160


def _rows(path: Path) -> int:
    """Rows in the store file right now (0 when it does not exist yet or is being replaced)."""
    try:
        with h5py.File(path, "r") as h5:
            return int(h5["features"].shape[0])
    except (OSError, KeyError):
        return 0


def _start(cmd: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while _rows(out) < at_least:
        assert proc.poll() is None, f"extract ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "extract made no progress"
        time.sleep(0.01)


def _check_readable_without_duplicates(out: Path) -> int:
    with h5py.File(out, "r") as h5:  # plain HDF5 readers can open it too
        assert h5["features"].shape[0] == h5["paths"].shape[0]
    with FeatureStore.open(out) as store:
        paths = store.paths
        assert len(paths) == len(set(paths))
        return len(paths)


@pytest.mark.slow
def test_sigkill_and_ctrl_c_then_resume(tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "tiny.pt")
    images = tmp_path / "imgs"
    make_crops(images, N_IMAGES)
    out = tmp_path / "feats.h5"
    cmd = [sys.executable, "-m", "mdpr", "extract", "--images", str(images), "--weights", str(weights),
           "--output", str(out), "--device", "cpu", "--batch-size", "4", "--workers", "0",
           "--checkpoint-every", "0"]  # fold into the store as often as allowed: kills also land mid-fold
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # 1. A real SIGKILL in the middle of the run.
    proc = _start(cmd, env)
    _wait_for_rows(proc, out, 12)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    after_kill = _check_readable_without_duplicates(out)
    assert 12 <= after_kill < N_IMAGES

    # 2. Ctrl-C: a clean stop that folds what was done into the store and says how to continue.
    proc = _start(cmd, env)
    _wait_for_rows(proc, out, after_kill + 12)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Run the same command again to continue where it stopped" in stderr
    after_interrupt = _check_readable_without_duplicates(out)
    assert after_kill < after_interrupt < N_IMAGES
    assert not journal_path_for(out).exists()
    with FeatureStore.open(out) as store:
        assert not store.complete

    # 3. The same command again completes: every image exactly once, each with its own feature.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Resumed an interrupted extraction" in done.stdout
    with FeatureStore.open(out) as store:
        assert store.complete and len(store) == N_IMAGES
        paths = store.paths
        assert sorted(paths) == sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))
        feats = store.read_features()
        pids = store.pids
    reference = FeatureExtractor(weights, device="cpu", num_workers=0, normalize=True)([images / p for p in paths])
    np.testing.assert_allclose(feats, reference, atol=1e-4)
    assert pids.tolist() == [int(Path(p).name[:4]) for p in paths]
    assert not journal_path_for(out).exists()
    assert not list(tmp_path.glob("feats.h5.tmp-*")) and not list(tmp_path.glob(".feats.h5.*.tmp"))
