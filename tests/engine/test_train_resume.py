"""Acceptance 2: a training process killed mid-epoch (SIGKILL) and resumed with --resume gives the same
loss sequence, weights and final metrics as an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainkit import TINY, make_dataset
from typer.testing import CliRunner

from mdpr.cli import app

ARGS = ["--dataset", "tiny", "--recipe", "demo-cpu", "--epochs", "2", "--eval-period", "0"]
# 32x16 inputs keep this multi-run test within its time budget; exactness does not depend on the size
SETS = [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]", "dataloader.steps_per_epoch=2",
        "input.padding=2", "input.flip_prob=0.5",
        "input.random_erasing_prob=0.5", "input.random_patch_prob=0.5",
        # a patch pool that is active from the first epoch, so the resumed run has to rebuild it exactly
        "input.random_patch_pool=12", "input.random_patch_min_pool=4"]


def _sets() -> list:
    return [arg for s in SETS for arg in ("--set", s)]


def _records(run: Path, kind: str) -> list:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _losses(run: Path) -> dict:
    return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss") or k == "lr"}
            for r in _records(run, "train")}


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", train_ids=6, per_id=4)
    runner = CliRunner()

    # the interrupted run, in its own process, killed with SIGKILL in the middle of epoch 2
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mdpr", "train", *ARGS, "--output", str(killed), *_sets()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            metrics = killed / "metrics.jsonl"
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(x).get("epoch") == 2 and json.loads(x).get("step") == 1
                   for x in lines if x.strip().endswith("}")):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the training process never reached epoch 2")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 2  # resumes at the epoch boundary and replays epoch 2
    assert not (killed / "summary.json").exists()

    result = runner.invoke(app, ["train", "--resume", str(killed)])
    assert result.exit_code == 0, result.output

    straight = tmp_path / "straight"
    result = runner.invoke(app, ["train", *ARGS, "--output", str(straight), *_sets()])
    assert result.exit_code == 0, result.output

    resumed_losses, straight_losses = _losses(killed), _losses(straight)
    assert sorted(resumed_losses) == [1, 2, 3, 4]
    assert resumed_losses == straight_losses  # exact: same pixels, same arithmetic, same order
    a = torch.load(killed / "model.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(straight / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    final_a, final_b = _records(killed, "eval")[-1], _records(straight, "eval")[-1]
    for key in ("mAP", "rank1", "rank5", "mINP"):
        assert final_a[key] == final_b[key]
    assert len(_records(killed, "eval")) == 1 and len(_records(killed, "epoch")) == 2


def test_ctrl_c_in_the_first_epoch_prints_the_resume_command_and_the_run_continues(tmp_path: Path) -> None:
    """No --output: "the same command again" would start a new run, so Ctrl-C names `--resume RUN_DIR`."""
    make_dataset(tmp_path / "data", train_ids=6, per_id=4)
    sets = [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]", "dataloader.steps_per_epoch=6"]
    args = ["--dataset", "tiny", "--recipe", "demo-cpu", "--epochs", "1", "--eval-period", "0", "--init", "none",
            *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen([sys.executable, "-m", "mdpr", "train", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    run = None
    try:
        while time.monotonic() < deadline and run is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            for metrics in (tmp_path / "runs").glob("*/metrics.jsonl"):
                if any(json.loads(x).get("step", 0) >= 1 for x in metrics.read_text().splitlines()
                       if x.strip().endswith("}")):
                    run = metrics.parent
            time.sleep(0.02)
        assert run is not None, "the training never reached its first step"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    # the command as typed in the same folder (the run directory relative to it, as the run was named)
    assert f"Continue the run with: mdpr train --resume {run.relative_to(tmp_path)}\n" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # written before the first step: an interrupt in epoch 1 is resumable
    assert not (run / "model.pt").exists()

    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").is_file()
    assert sorted(r["iteration"] for r in _records(run, "train")) == list(range(1, 7))
