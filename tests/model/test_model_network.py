"""Forward/backward of every MDPR configuration switch on small inputs, and a CPU training step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mdpr.config import Config, InputConfig, LossConfig, ModelConfig
from mdpr.errors import MdprError
from mdpr.losses import MDPRLoss
from mdpr.model import MDPR, build_model

TARGETS = torch.tensor([0, 0, 1, 1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides) -> ModelConfig:
    base = dict(depth=18, ibn=True, embedding_dim=16, num_classes=6)
    base.update(overrides)
    return ModelConfig(**base)


def images(n: int = 4, height: int = 64, width: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, height, width, generator=generator) * 255


def loss_names(cfg: ModelConfig, diversity: bool = True) -> list:
    """The loss terms each configuration must produce, in the official order."""
    names = []
    if cfg.branches in ("both", "hard"):
        names += ["loss_hard_global_cls", "loss_hard_global_triplet"]
        for i in range(cfg.num_parts):
            names += [f"loss_hard_part_{i}_cls", f"loss_hard_part_{i}_triplet"]
    if cfg.branches in ("both", "soft"):
        for level in (4, 3):
            names += [f"loss_attn_feature{level}_cls", f"loss_attn_feature{level}_triplet", f"loss_attn_bap{level}_cls"]
            if diversity:
                names += [f"loss_diversity_loss_{level}", f"loss_diversity_loss_reg_{level}"]
    if cfg.branches == "both" and cfg.fusion:
        names += ["loss_fusion_cls", "loss_fusion_triplet"]
    if cfg.branches == "both" and cfg.distillation:
        names.append("loss_mutual_distillation")
    return names


def expected_layout(cfg: ModelConfig) -> list:
    e, layout = cfg.embedding_dim, []
    if cfg.branches in ("both", "hard"):
        layout += [("hard_global", e)] + [(f"hard_part_{i}", e) for i in range(cfg.num_parts)]
    if cfg.branches in ("both", "soft"):
        layout += [("soft_layer4", e), ("soft_layer3", e)]
    if cfg.branches == "both" and cfg.fusion:
        layout.append(("fusion", 4 * e))
    return layout


@pytest.fixture(scope="module")
def paper_model() -> MDPR:
    """The paper's configuration on a ResNet-18, shared by the tests that do not train it."""
    torch.manual_seed(0)
    return build_model(tiny())


SWITCHES = {
    "paper-setting": tiny(),
    "no-attention-guidance": tiny(attention_guidance=False),
    "no-fusion": tiny(fusion=False),
    "no-distillation": tiny(distillation=False),
    "hard-branch-only": tiny(branches="hard"),
    "soft-branch-only": tiny(branches="soft"),
    "linear-classifier": tiny(classifier="linear", cls_scale=1.0),
    "three-parts": tiny(num_parts=3),
    "three-attention-maps": tiny(num_attention=3),
    "no-ibn": tiny(ibn=False),
    "resnet34": tiny(depth=34, embedding_dim=8),
    "resnet50": tiny(depth=50, embedding_dim=8, num_parts=1, num_attention=1),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_forward_backward_for_every_switch(name):
    cfg = SWITCHES[name]
    torch.manual_seed(0)
    model = build_model(cfg)
    height = 96 if cfg.num_parts == 3 else 64
    x = images(height=height)
    outputs = model(x)
    losses = MDPRLoss(LossConfig())(outputs, TARGETS)
    assert list(losses) == loss_names(cfg)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # every trainable parameter that can influence a training loss receives a gradient
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], no_grad
    model.eval()
    with torch.no_grad():
        feats = model(x)
    assert model.feature_layout == expected_layout(cfg)
    assert feats.shape == (4, model.feature_dim) == (4, sum(d for _, d in expected_layout(cfg)))
    assert torch.isfinite(feats).all()


def test_paper_feature_dimension_is_4608():
    with torch.device("meta"):
        model = MDPR(ModelConfig(num_classes=0))
    assert model.feature_dim == 4608
    assert [d for _, d in model.feature_layout] == [512, 512, 512, 512, 512, 2048]


def test_single_branch_turns_off_fusion_and_distillation():
    hard = build_model(tiny(branches="hard"))
    assert hard.soft_branch is None and hard.fusion is None and hard.predictors is None
    assert not hard.config.fusion and not hard.config.distillation and not hard.config.attention_guidance
    soft = build_model(tiny(branches="soft", attention_guidance=False))
    assert soft.hard_branch is None and soft.soft_branch.attention_guide is None
    assert soft.soft_branch.layer3_attention.conv1x1.in_channels == 256  # ResNet-18 layer3 = half of layer4


def test_cpu_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model(tiny())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    criterion = MDPRLoss(LossConfig())
    x = images()
    bnneck_bias = model.hard_branch.global_head.bnneck.bias.detach().clone()
    totals = []
    for _ in range(3):
        optimizer.zero_grad()
        total = sum(criterion(model(x), TARGETS).values())
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0]
    # BNNeck bias is frozen, as in fast-reid
    assert not model.hard_branch.global_head.bnneck.bias.requires_grad
    assert torch.equal(model.hard_branch.global_head.bnneck.bias, bnneck_bias)


def test_input_tensor_is_not_normalised_in_place(paper_model):
    x = images(4)
    before = x.clone()
    with torch.no_grad():
        paper_model.train()
        paper_model(x)
        paper_model.eval()
        paper_model(x)
    assert torch.equal(x, before)


def test_pixel_statistics_come_from_the_input_config(paper_model):
    cfg = Config(model=tiny(), input=InputConfig(pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)))
    identity = build_model(cfg).eval()
    assert identity.pixel_mean.flatten().tolist() == [0.0, 0.0, 0.0]
    official = paper_model.eval()  # fast-reid's ImageNet statistics on the 0..255 scale
    identity.load_state_dict(official.state_dict())
    x = images(2)
    normalised = (x - official.pixel_mean) / official.pixel_std
    with torch.no_grad():
        torch.testing.assert_close(identity(normalised), official(x), rtol=1e-4, atol=1e-4)


def test_eval_output_does_not_depend_on_the_batch(paper_model):
    model = paper_model.eval()
    x = images(4)
    with torch.no_grad():
        full, single = model(x), model(x[:1])
    torch.testing.assert_close(full[:1], single, rtol=1e-4, atol=1e-4)


def test_attention_maps_are_softmax_without_background(paper_model):
    maps = paper_model.eval().attention_maps(images(2))
    assert maps["layer4"].shape == maps["layer3"].shape == (2, 2, 4, 2)
    total = maps["layer4"].sum(dim=1)
    assert (total > 0).all() and (total < 1).all()  # the background channel takes the rest
    with pytest.raises(MdprError, match="no Soft Content Branch"):
        build_model(tiny(branches="hard", depth=18)).attention_maps(images(2))


def test_model_without_classes_extracts_but_cannot_train():
    model = build_model(tiny(num_classes=0))
    assert model.hard_branch.global_head.classifier is None
    with torch.no_grad():
        with pytest.raises(MdprError, match="num_classes"):
            MDPRLoss()(model(images()), TARGETS)
        assert model.eval()(images(2)).shape == (2, model.feature_dim)


@pytest.mark.parametrize("overrides, message", [
    (dict(last_stride=2), "last_stride"),
    (dict(branches="left"), "branches"),
    (dict(depth=42), "depth"),
    (dict(classifier="arcface"), "classifier"),
    (dict(num_parts=0), "num_parts"),
    (dict(num_classes=-1), "num_classes"),
])
def test_invalid_configurations_are_reported(overrides, message):
    with pytest.raises(MdprError, match=message):
        build_model(tiny(**overrides))


def test_input_too_low_for_the_parts_is_reported():
    model = build_model(tiny(num_parts=6)).eval()
    with torch.no_grad(), pytest.raises(MdprError, match="too low"):
        model(images(2, height=64))


def test_training_output_rejected_in_eval_mode(paper_model):
    with torch.no_grad(), pytest.raises(MdprError, match="model.train"):
        MDPRLoss()(paper_model.eval()(images(2)), TARGETS[:2])


def test_config_is_not_mutated_and_resolved_copy_is_kept():
    cfg = tiny(branches="soft")
    model = build_model(cfg)
    assert cfg.fusion and cfg.distillation  # the caller's object is untouched
    assert dataclasses.replace(model.config, fusion=True, distillation=True) == cfg


def test_model_code_is_device_agnostic():
    root = Path(__file__).resolve().parents[2] / "mdpr"
    offenders = [str(p) for p in [*root.joinpath("model").glob("*.py"), root / "losses.py"]
                 if ".cuda(" in p.read_text()]
    assert offenders == []


def test_training_with_a_single_image_is_reported(paper_model):
    with pytest.raises(MdprError, match="at least 2 images"):
        paper_model.train()(images(1))
    with torch.no_grad():
        assert paper_model.eval()(images(1)).shape == (1, paper_model.feature_dim)
