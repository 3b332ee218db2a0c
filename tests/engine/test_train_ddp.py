"""Acceptance 3: 2-process DDP on CPU (gloo) matches one process computing the same global batch.

What "the same global batch" means for this model: each DDP process normalises its half of the batch
with its own BatchNorm statistics and mines triplets within its own identities (the sampler gives the
ranks disjoint identities). One process reproduces exactly that with ``solver.grad_accumulation=2``:
it splits the global batch into the same two identity-aligned halves, runs forward/backward on each
(so BatchNorm sees the same per-half statistics) and averages the gradients, which is what DDP's
all-reduce computes. So the logged (averaged) losses and the weights after the optimizer steps must
agree up to floating-point summation order. (SyncBatchNorm, which would make the statistics global,
has no CPU implementation in PyTorch, so it cannot be the reference here.) BatchNorm *running*
statistics are excluded from the comparison: DDP keeps rank 0's, accumulation updates them once per
half; they do not enter a training-mode forward pass, so they cannot affect losses or gradients.
Plain SGD (no momentum, no weight decay, constant rate) is used so that the weights after the run
give the summed gradients exactly: ``(w_init - w_final) / lr``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainkit import TINY, make_dataset
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.config import Config
from mdpr.engine.rng import seed_everything
from mdpr.model import build_model

LR = 1e-4
SETS = [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]", "dataloader.steps_per_epoch=2",
        "solver.optimizer=SGD", "solver.momentum=0", "solver.weight_decay=0", "solver.weight_decay_norm=0",
        f"solver.base_lr={LR}", f"solver.eta_min_lr={LR}", "solver.warmup_iters=0", "input.random_patch_prob=0.5",
        "input.random_erasing_prob=0.5", "input.flip_prob=0.5", "input.padding=2"]
ARGS = ["--dataset", "tiny", "--recipe", "demo-cpu", "--epochs", "1", "--eval-period", "-1"]


def _sets(extra=()):
    return [arg for s in [*SETS, *extra] for arg in ("--set", s)]


def _train_losses(run: Path):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_accumulation(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", train_ids=8, per_id=2)
    runner = CliRunner()
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = runner.invoke(app, ["train", *ARGS, "--procs", "2", "--output", str(ddp), *_sets()])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", *ARGS, "--output", str(single), *_sets(["solver.grad_accumulation=2"])])
    assert result.exit_code == 0, result.output

    a, b = _train_losses(ddp), _train_losses(single)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2]
    # step 2 starts from weights that differ by rounding, which the hard-mined terms amplify to ~1e-4
    for ra, rb, rel, tol in zip(a, b, (1e-5, 5e-4), (1e-6, 1e-5)):
        terms = [k for k in ra if k.startswith("loss")]
        assert terms == [k for k in rb if k.startswith("loss")]
        for k in terms:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=tol), k

    # the gradients: from the initial weights (rebuilt exactly as the trainer builds them) to the final ones
    ckpt = torch.load(ddp / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2
    cfg = Config.from_dict(ckpt["config"])
    seed_everything(cfg.train.seed)
    w0 = build_model(cfg).state_dict()
    wa = torch.load(ddp / "model.pt", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(single / "model.pt", map_location="cpu", weights_only=True)["model"]
    params = [k for k in wa if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    ga = torch.cat([((w0[k] - wa[k]) / LR).flatten() for k in params])
    gb = torch.cat([((w0[k] - wb[k]) / LR).flatten() for k in params])
    assert gb.norm() > 1.0  # the run really moved the weights
    # float32 rounding of two SGD steps through hard-mined triplets: ~2e-4 on this data (the same with the
    # earlier, per-chunk random patch switched off), orders of magnitude below a real mismatch
    assert (ga - gb).norm() / gb.norm() < 5e-4
    assert (ga - gb).abs().max() < 2e-3 * gb.abs().max()

    # and the comparison has teeth: without accumulation (one global BatchNorm / triplet batch) it differs
    other = tmp_path / "global"
    result = runner.invoke(app, ["train", *ARGS, "--output", str(other), *_sets()])
    assert result.exit_code == 0, result.output
    assert _train_losses(other)[0]["loss"] != pytest.approx(a[0]["loss"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_launch_joins_its_process_group(tmp_path: Path) -> None:
    """Multi-node training is `torchrun ... -m mdpr train`: here 2 local CPU processes (gloo)."""
    import os
    import subprocess
    import sys

    make_dataset(tmp_path / "data", train_ids=4, per_id=2)
    run = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mdpr", "train", *ARGS, "--output", str(run), *_sets(["dataloader.steps_per_epoch=1"])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 1
    assert len(_train_losses(run)) == 1 and (run / "summary.json").is_file()


@pytest.mark.slow
def test_two_processes_accumulating_equal_one_process_with_the_whole_global_batch(tmp_path: Path) -> None:
    """Issue 13, acceptance 3: 2 gloo processes x 2 accumulated process steps of 4 images give the parameter
    update of 1 process accumulating all 4 process steps of the global batch of 16."""
    make_dataset(tmp_path / "data", train_ids=8, per_id=4)
    runner = CliRunner()
    # one update: its gradient is compared directly (a second one would amplify rounding through hard mining)
    layout = ["dataloader.batch_size=16", "dataloader.process_batch=4", "dataloader.num_instances=2",
              "dataloader.steps_per_epoch=1"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = runner.invoke(app, ["train", *ARGS, "--procs", "2", "--output", str(ddp), *_sets(layout)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", *ARGS, "--output", str(single), *_sets(layout)])
    assert result.exit_code == 0, result.output
    a, b = _train_losses(ddp), _train_losses(single)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1]
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5)

    ckpt = torch.load(ddp / "last.pt", map_location="cpu", weights_only=True)
    cfg = Config.from_dict(ckpt["config"])
    seed_everything(cfg.train.seed)
    w0 = build_model(cfg).state_dict()
    wa = torch.load(ddp / "model.pt", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(single / "model.pt", map_location="cpu", weights_only=True)["model"]
    params = [k for k in wa if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    ga = torch.cat([((w0[k] - wa[k]) / LR).flatten() for k in params])
    gb = torch.cat([((w0[k] - wb[k]) / LR).flatten() for k in params])
    assert gb.norm() > 1.0
    assert (ga - gb).norm() / gb.norm() < 5e-4
