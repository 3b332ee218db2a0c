"""`mdpr train --dry-run`: the paper's run planned on any number of processes, and never a silent random start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from fakes import build_market
from typer.testing import CliRunner

from mdpr.cli import app

runner = CliRunner()
LAYOUT_KEYS = ("processes", "accumulation_steps", "global_batch", "images_per_process_step",
               "identities_per_process_step", "iterations_per_epoch", "total_iterations", "warmup_iterations", "init")


@pytest.fixture
def market(tmp_path: Path) -> str:
    build_market(tmp_path / "data")
    assert runner.invoke(app, ["prepare", "market", str(tmp_path / "data")]).exit_code == 0
    return "market"


def plan(*args: str) -> dict:
    result = runner.invoke(app, ["train", *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("recipe", ["market1501", "dukemtmc", "synergyreid"])
def test_the_paper_layout_whatever_the_number_of_processes(market: str, recipe: str) -> None:
    plans = {f"{flag} {n}": plan("--dataset", market, "--recipe", recipe, "--init", "none", flag, str(n))
             for flag in ("--procs", "--gpus") for n in (1, 2, 4)}  # --gpus is planned, not run
    for name, p in plans.items():
        assert set(LAYOUT_KEYS) <= set(p), name
        assert (p["global_batch"], p["images_per_process_step"], p["identities_per_process_step"]) == (256, 64, 4), name
        assert p["processes"] * p["accumulation_steps"] * p["images_per_process_step"] == 256, name
    first = plans["--procs 1"]
    assert {(p["iterations_per_epoch"], p["total_iterations"], p["warmup_iterations"]) for p in plans.values()} == {
        (first["iterations_per_epoch"], first["total_iterations"], first["warmup_iterations"])}
    assert plans["--gpus 2"]["accumulation_steps"] == 2 and plans["--procs 1"]["accumulation_steps"] == 4


def test_the_paper_recipe_offline_says_where_to_get_lup_moco_r101(market: str, mdpr_home: Path) -> None:
    for extra in (["--dry-run"], []):
        result = runner.invoke(app, ["train", "--dataset", market, *extra])
        assert result.exit_code == 2, result.output
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in result.output
        cache = mdpr_home / "torch" / "hub" / "checkpoints" / "lup_moco_r101.pth"
        assert "lup_moco_r101.pth" in message and str(cache) in message
        assert "--init=imagenet" in message and "--init=none" in message
    offline = runner.invoke(app, ["train", "--dataset", market, "--init", "imagenet", "--dry-run"])
    assert offline.exit_code == 2 and "https://" in offline.stderr and str(mdpr_home / "torch") in offline.stderr


def test_none_warns_and_a_file_initialises_a_short_real_run(market: str, tmp_path: Path) -> None:
    cold = runner.invoke(app, ["train", "--dataset", market, "--init", "none", "--dry-run"])
    assert cold.exit_code == 0 and "will not reach the paper's numbers" in cold.stdout

    backbone = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), backbone)  # torchvision's layout
    tiny = ["--set", "model.depth=18", "--set", "model.ibn=false", "--set", "input.size_train=[64,32]",
            "--set", "input.size_test=[64,32]", "--set", "dataloader.batch_size=16", "--set",
            "dataloader.process_batch=0", "--set", "dataloader.num_instances=4", "--set", "dataloader.num_workers=0",
            "--set", "solver.warmup_iters=2"]
    planned = plan("--dataset", market, "--init", str(backbone), *tiny)
    assert planned["init"] == str(backbone)
    run = runner.invoke(app, ["train", "--dataset", market, "--init", str(backbone), "--epochs", "1", "--output",
                              str(tmp_path / "run"), "--eval-period", "-1", *tiny])
    assert run.exit_code == 0, run.output
    assert f"Backbone initialised from {backbone}" in run.stdout
    assert str(backbone) in (tmp_path / "run" / "config.yaml").read_text()
