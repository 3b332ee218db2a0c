"""Training's final evaluation and `mdpr evaluate` on the run's model.pt are the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trainkit import TINY
from typer.testing import CliRunner

from mdpr.cli import app

runner = CliRunner()


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_final_training_metrics_equal_mdpr_evaluate_on_model_pt(tmp_path: Path) -> None:
    prepared = runner.invoke(app, ["prepare", "demo", str(tmp_path / "data"), "--name", "agree", "--ids", "16",
                                   "--images-per-id", "6"])
    assert prepared.exit_code == 0, prepared.output
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--dataset", "agree", "--recipe", "demo-cpu", "--output", str(run),
                                  "--epochs", "1", *_sets([*TINY, "dataloader.steps_per_epoch=2"])])
    assert trained.exit_code == 0, trained.output
    final = json.loads((run / "summary.json").read_text())["final_metrics"]

    # the same torch threads as training (evaluate drops to one thread on a busy machine, which may change
    # the last bits of a feature)
    threads = str(torch.get_num_threads())
    evaluated = runner.invoke(app, ["evaluate", "--dataset", "agree", "--weights", str(run / "model.pt"), "--json",
                                    "--threads", threads])
    assert evaluated.exit_code == 0, evaluated.output
    out = json.loads(evaluated.stdout)
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "num_queries", "num_valid_queries", "num_gallery",
                "unreadable_images", "unlabelled_dropped"):
        assert final[key] == out[key], key  # exactly: same pipeline, same features
    assert 0.0 < out["mAP"] < 1.0  # a real ranking, not a trivial one

    # the table printed at the end of training shows these numbers
    assert f"{out['mAP']:.4f}" in trained.stdout and f"{out['rank1']:.4f}" in trained.stdout
