"""`mdpr train` end to end on a tiny dataset: run directory contents, ablations, bad input, NaN guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainkit import TINY, make_dataset
from typer.testing import CliRunner

from mdpr.cli import app

runner = CliRunner()


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def train(*args: str, extra=()):
    result = runner.invoke(app, ["train", *args, *_sets([*TINY, *extra])])
    return result


@pytest.fixture
def tiny(tmp_path: Path):
    return make_dataset(tmp_path / "tiny-data")


def test_run_directory_holds_config_metrics_checkpoints_plot(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train("--dataset", "tiny", "--recipe", "demo-cpu", "--output", str(run), "--epochs", "2",
                   "--eval-period", "1", "--checkpoint-period", "1", "--json",
                   extra=["dataloader.steps_per_epoch=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["iterations"] == 2
    assert [e["epoch"] for e in summary["evaluations"]] == [1, 2]
    assert 0 <= summary["final_metrics"]["mAP"] <= 1 and summary["final_metrics"]["num_queries"] == 4
    for name in ("config.yaml", "metrics.jsonl", "log.txt", "last.pt", "epoch_001.pt", "epoch_002.pt",
                 "model.pt", "summary.json", "training.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert [r["iteration"] for r in steps] == [1, 2]
    terms = [k for k in steps[0] if k.startswith("loss_")]
    assert "loss_hard_global_cls" in terms and "loss_mutual_distillation" in terms
    assert steps[0]["loss"] == pytest.approx(sum(steps[0][k] for k in terms))
    assert steps[0]["lr"] == pytest.approx(1e-3 * 0.1)  # warmup starts at warmup_factor x base_lr
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "sampler", "config", "classes"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 2 and ckpt["classes"] == [1, 2, 3, 4, 5, 6]
    assert ckpt["config"]["model"]["num_classes"] == 6 and ckpt["config"]["dataset"] == "tiny"
    from mdpr.model import load_model

    model, cfg = load_model(run / "model.pt")
    assert cfg.input.size_test == (64, 32) and model(torch.zeros(2, 3, 64, 32)).shape == (2, model.feature_dim)

    # a checkpoint from another dataset's class count cannot be resumed on it ...
    make_dataset(tmp_path / "other-data", name="other", train_ids=8)
    result = train("--resume", str(run), "--dataset", "other", "--epochs", "3")
    assert result.exit_code == 2
    assert "dataset cannot change when resuming" in result.output
    # nor with another architecture
    result = train("--resume", str(run), "--epochs", "3", extra=["model.embedding_dim=48"])
    assert result.exit_code == 2 and "model.embedding_dim cannot change when resuming" in result.output
    # ... but a new run may start from its weights: the classifier of the other size is skipped
    run2 = tmp_path / "run2"
    ok = train("--dataset", "other", "--recipe", "demo-cpu", "--output", str(run2), "--epochs", "1",
               "--eval-period", "-1", "--weights", str(run / "model.pt"), extra=["dataloader.steps_per_epoch=1"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    "switch",
    ["model.distillation=false", "model.fusion=false", "model.attention_guidance=false",
     "model.branches=hard", "model.branches=soft"],
)
def test_ablation_switches_train(tiny, tmp_path: Path, switch: str) -> None:
    run = tmp_path / "run"
    result = train("--dataset", "tiny", "--recipe", "demo-cpu", "--output", str(run), "--epochs", "1",
                   "--eval-period", "-1", extra=["dataloader.steps_per_epoch=1", switch])
    assert result.exit_code == 0, result.output
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    terms = {k for k in step if k.startswith("loss_")}
    if switch.startswith("model.distillation") or "branches" in switch:
        assert "loss_mutual_distillation" not in terms
    if switch.startswith("model.fusion") or "branches" in switch:
        assert not any(t.startswith("loss_fusion") for t in terms)
    if switch == "model.branches=hard":
        assert not any("attn" in t for t in terms)
    if switch == "model.branches=soft":
        assert not any("hard" in t for t in terms)


def test_unknown_dataset_lists_registered_ones(tiny) -> None:
    result = train("--dataset", "nosuch", "--recipe", "demo-cpu")
    assert result.exit_code == 2
    assert "Unknown dataset 'nosuch'" in result.output and "tiny" in result.output
    assert "Traceback" not in result.output


def test_two_gpus_without_gpus_is_one_sentence(tiny) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs")
    result = train("--dataset", "tiny", "--gpus", "2")
    assert result.exit_code == 2
    assert "--gpus 2 needs 2 CUDA GPU(s)" in result.output


def test_resume_directory_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    result = train("--resume", str(tmp_path / "empty-run"))
    assert result.exit_code == 2
    assert "holds no checkpoint (last.pt)" in result.output


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train("--dataset", "tiny", "--recipe", "demo-cpu", "--output", str(run), "--epochs", "4",
                   "--eval-period", "-1", extra=["dataloader.steps_per_epoch=1", "solver.base_lr=1e30",
                                                 "solver.warmup_iters=0"])
    assert result.exit_code == 2
    assert "Training stopped: loss term 'loss_" in result.output and "last good checkpoint" in result.output
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["epoch"] >= 1


def test_bad_override_and_conflicting_options(tiny) -> None:
    result = train("--dataset", "tiny", "--recipe", "demo-cpu", "--set", "solver.bogus=1")
    assert result.exit_code == 2 and "solver.bogus" in result.output
    result = train("--dataset", "tiny", "--gpus", "1", "--procs", "2")
    assert result.exit_code == 2 and "not both" in result.output
