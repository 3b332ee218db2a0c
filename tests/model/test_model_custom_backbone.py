"""A backbone family registered from outside mdpr/model/ trains and evaluates MDPR end to end (issue 11, acceptance 4).

The toy family lives only in this file: it is registered through the public registry, trained with the engine on a
tiny generated dataset, saved, loaded back by name and evaluated with `mdpr evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn
from trainkit import TINY, make_dataset
from typer.testing import CliRunner

from mdpr.config import ModelConfig
from mdpr.model import Backbone, load_model, register_backbone_family, unregister_backbone_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILY = "test-toy"


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def build_toy(cfg: ModelConfig) -> Backbone:
    """A four-convolution backbone: /4 stem, /2 layer3, layer4 at layer3's resolution."""
    stem = nn.Sequential(conv_bn_relu(3, 16, 2), conv_bn_relu(16, 24, 2))
    return Backbone(stem=stem, stages=(conv_bn_relu(24, 32, 2), conv_bn_relu(32, 48, 1)), channels=(32, 48))


@pytest.fixture
def toy_family() -> Iterator[str]:
    register_backbone_family(FAMILY, build_toy)
    yield FAMILY
    unregister_backbone_family(FAMILY)


def test_registered_toy_family_trains_and_evaluates(toy_family, tmp_path: Path) -> None:
    from mdpr.cli import app
    from mdpr.workflows.train import TrainOptions, train_run

    make_dataset(tmp_path / "data", name="tiny")
    run = tmp_path / "run"
    result = train_run(TrainOptions(dataset="tiny", recipe="demo-cpu", output=run, epochs=1, eval_period=0,
                                    device="cpu", overrides=[*TINY, f"model.backbone={toy_family}",
                                                             "dataloader.steps_per_epoch=3"]))
    assert result is not None and result.summary["iterations"] == 3
    trained = result.summary["final_metrics"]
    assert 0 < trained["mAP"] <= 1 and trained["num_queries"] == 4

    model, loaded = load_model(run / "model.pt")
    assert loaded.model.backbone == toy_family
    assert isinstance(model.stem, nn.Sequential) and model.stem[0][0].out_channels == 16
    assert model.soft_branch is not None and model.soft_branch.layer4[0].out_channels == 48
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 32) * 255).shape == (2, model.feature_dim)

    cli = CliRunner().invoke(app, ["evaluate", "--dataset", "tiny", "--weights", str(run / "model.pt"), "--json"])
    assert cli.exit_code == 0, cli.output
    evaluated = json.loads(cli.stdout.strip().splitlines()[-1])
    assert evaluated["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)


def test_unknown_family_names_the_registered_ones() -> None:
    from mdpr.errors import MdprError
    from mdpr.model import build_model

    with pytest.raises(MdprError, match="model.backbone 'nope'.*resnet.*register_backbone_family"):
        build_model(ModelConfig(backbone="nope"))
