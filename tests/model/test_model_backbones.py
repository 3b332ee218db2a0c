"""Every registered backbone family honours the Backbone contract, round-trips its settings through the keys and
initialises MDPR from a whole-backbone file of its own layout (parametrised over the registry, timm's habit)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Dict, List

import pytest
import torch

from mdpr.config import ModelConfig
from mdpr.errors import MdprError
from mdpr.losses import MDPRLoss
from mdpr.model import MDPR, backbone_families, build_model, get_backbone_family
from mdpr.model.backbone import build_backbone
from mdpr.model.formats import to_official_state_dict
from mdpr.model.loading import infer_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: settings of each built-in family to test; the first of each is small enough to run on a CPU in a test
EXAMPLES: Dict[str, List[Dict[str, Any]]] = {
    "resnet": [dict(depth=18, ibn=True), dict(depth=34, ibn=False), dict(depth=50, ibn=True),
               dict(depth=101, ibn=True), dict(depth=152, ibn=False)],
}

FAMILIES = [name for name in backbone_families() if name in EXAMPLES]
ALL_EXAMPLES = [(name, settings) for name in FAMILIES for settings in EXAMPLES[name]]


def tiny(family: str, **settings: Any) -> ModelConfig:
    return ModelConfig(backbone=family, embedding_dim=16, num_classes=4, **settings)


def whole_backbone_file(cfg: ModelConfig) -> OrderedDict[str, torch.Tensor]:
    """A family's backbone as its weight files name it (stem, layer3 and layer4 under the family's prefixes)."""
    family = get_backbone_family(cfg.backbone)
    backbone = build_backbone(cfg)
    modules = [backbone.stem, *backbone.stages]
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, module in zip(family.file_prefixes, modules):
        for key, value in module.state_dict().items():
            state[prefix + key] = value.clone().uniform_(0.5, 1.5) if value.is_floating_point() else value
    return state


def test_every_built_in_family_has_test_examples():
    assert "resnet" in backbone_families()
    assert [name for name in backbone_families() if not name.startswith("test-")] == FAMILIES


@pytest.mark.parametrize("family, settings", ALL_EXAMPLES, ids=lambda v: str(v))
def test_backbone_contract_and_settings_round_trip_through_the_keys(family, settings):
    cfg = tiny(family, **settings)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
        net = MDPR(cfg)
    assert len(backbone.stages) == 2 and all(c > 0 for c in backbone.channels)
    own = net.state_dict()
    assert any(k.startswith("hard_branch.layer3.") for k in own) and any(k.startswith("stem.") for k in own)
    if get_backbone_family(family).infer is not None:
        for state in (own, to_official_state_dict(own)) if family == "resnet" else (own,):
            inferred = infer_model_config(state)
            assert inferred.backbone == family
            assert {k: getattr(inferred, k) for k in settings} == settings


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_outputs_have_the_declared_channels_at_one_resolution(family):
    backbone = build_backbone(tiny(family, **EXAMPLES[family][0]))
    stage3, stage4 = (stage.eval() for stage in backbone.stages)
    with torch.no_grad():
        layer3 = stage3(backbone.stem.eval()(torch.rand(1, 3, 64, 32)))
        layer4 = stage4(layer3)
    assert (layer3.shape[1], layer4.shape[1]) == backbone.channels
    assert layer3.shape[-2:] == layer4.shape[-2:]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_on_every_family(family):
    torch.manual_seed(0)
    model = build_model(tiny(family, **EXAMPLES[family][0]))
    images = torch.rand(4, 3, 64, 32) * 255
    losses = MDPRLoss()(model.forward_train(images), torch.tensor([0, 0, 1, 1]))
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert model.eval().forward_features(images).shape == (4, model.feature_dim)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_backbone_file_of_the_family_layout_initialises_stem_and_both_branches(tmp_path, family):
    cfg = tiny(family, **EXAMPLES[family][0])
    state = whole_backbone_file(cfg)
    path = tmp_path / f"{family}.pth"
    torch.save(state, path)
    net = build_model(dataclasses.replace(cfg, pretrained=str(path)))
    assert net.pretrained_report is not None and net.pretrained_report.ok
    own = net.state_dict()
    prefixes = get_backbone_family(family).file_prefixes
    for part, model_prefix in net.backbone_prefixes():
        for key, value in state.items():
            inner = key[len(prefixes[part]):]
            if key.startswith(prefixes[part]) and model_prefix + inner in own:
                torch.testing.assert_close(own[model_prefix + inner], value, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_of_other_settings_is_one_sentence_naming_file_and_expectation(tmp_path, family):
    small = EXAMPLES[family][0]
    other = next(s for s in EXAMPLES[family][1:] if s != small)
    state = whole_backbone_file(tiny(family, **other))
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(MdprError) as error:
        build_model(tiny(family, **small, pretrained=str(path)))
    message = str(error.value)
    assert str(path) in message and "\n" not in message and message.endswith(".")
    assert get_backbone_family(family).title(tiny(family, **small)) in message
    assert len(message) < 400, message  # one sentence, not a key dump
