"""``mdpr evaluate --dataset --weights``: extraction with the checkpoint's model, stores, same numbers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import mdpr.cli.evaluate  # noqa: F401  (registers the subcommand)
import mdpr.cli.prepare  # noqa: F401
from mdpr.cli import app
from mdpr.store import FeatureStore

runner = CliRunner()
TINY_MODEL = ["model.depth=18", "model.ibn=false", "model.embedding_dim=16", "input.size_train=[64,32]",
              "input.size_test=[64,32]"]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    import torch

    from mdpr.config import load_config
    from mdpr.model import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("eval-model")
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    weights = save_checkpoint(root / "tiny.pt", build_model(cfg).eval(), cfg)
    return root, weights


def _prepare_demo(root, name="tinydemo"):
    result = runner.invoke(app, ["prepare", "demo", str(root / "demo"), "--ids", "6", "--images-per-id", "4",
                                 "--size", "64x32", "--name", name])
    assert result.exit_code == 0, result.output
    return name


def test_dataset_and_weights_then_saved_stores_give_the_same_numbers(tiny_setup):
    root, weights = tiny_setup
    name = _prepare_demo(root)
    feats = root / "feats"
    result = runner.invoke(app, ["evaluate", "--dataset", name, "--weights", str(weights), "--device", "cpu",
                                 "--batch-size", "64", "--num-workers", "0", "--save-features", str(feats), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["num_queries"] > 0 and out["num_valid_queries"] > 0 and 0.0 <= out["mAP"] <= 1.0
    assert len(out["cmc"]) == min(50, out["num_gallery"])
    with FeatureStore.open(feats / "query.h5") as q, FeatureStore.open(feats / "gallery.h5") as g:
        assert len(q) == out["num_queries"] and len(g) == out["num_gallery"]
        assert q.fingerprint and q.fingerprint == g.fingerprint and q.dim == 144
    again = runner.invoke(app, ["evaluate", "--query-features", str(feats / "query.h5"), "--gallery-features",
                                str(feats / "gallery.h5"), "--json"])
    assert again.exit_code == 0, again.output
    stored = json.loads(again.stdout)
    assert stored["mAP"] == pytest.approx(out["mAP"], abs=1e-9) and stored["cmc"] == pytest.approx(out["cmc"])


def test_dataset_path_errors(tiny_setup):
    root, weights = tiny_setup
    result = runner.invoke(app, ["evaluate", "--dataset", "no-such-dataset", "--weights", str(weights)])
    assert result.exit_code == 2 and "no-such-dataset" in result.stderr
    name = _prepare_demo(root, "tinydemo2")
    result = runner.invoke(app, ["evaluate", "--dataset", name, "--weights", str(root / "missing.pt")])
    assert result.exit_code == 2 and "missing.pt" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", "--dataset", name])
    assert result.exit_code == 2 and "Say what to evaluate" in " ".join(result.stderr.split())
