"""The individual MDPR loss terms against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mdpr.config import LossConfig, ModelConfig
from mdpr.losses import (
    MDPRLoss,
    attention_diversity,
    attention_mass,
    circle_logits,
    cross_entropy,
    mutual_distillation,
    triplet_loss,
)
from mdpr.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_circle_logits_apply_margins_and_scale():
    cosine = torch.tensor([[0.8, 0.2, -0.5]])
    logits = circle_logits(cosine, torch.tensor([0]), scale=64.0, margin=0.35)
    positive = max(1 + 0.35 - 0.8, 0) * (0.8 - 0.65) * 64
    negative_1 = max(0.2 + 0.35, 0) * (0.2 - 0.35) * 64
    negative_2 = max(-0.5 + 0.35, 0) * (-0.5 - 0.35) * 64  # clamped weight: 0
    torch.testing.assert_close(logits, torch.tensor([[positive, negative_1, negative_2]]))


def test_circle_logit_weights_carry_no_gradient():
    cosine = torch.tensor([[0.3, 0.1]], requires_grad=True)
    circle_logits(cosine, torch.tensor([1]), 2.0, 0.25).sum().backward()
    # d/dcos of alpha * (cos - delta) with alpha constant is alpha * scale
    torch.testing.assert_close(cosine.grad, torch.tensor([[2.0 * (0.3 + 0.25), 2.0 * (1 + 0.25 - 0.1)]]))


def test_cross_entropy_with_and_without_smoothing():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    targets = torch.tensor([0, 2])
    torch.testing.assert_close(cross_entropy(logits, targets, 0.0), F.cross_entropy(logits, targets))
    log_p = F.log_softmax(logits, dim=1)
    eps = 0.1
    manual = -((1 - eps) * log_p[[0, 1], [0, 2]] + eps / 2 * (log_p.sum(1) - log_p[[0, 1], [0, 2]])).mean()
    torch.testing.assert_close(cross_entropy(logits, targets, eps), manual)
    adaptive = cross_entropy(logits, targets, -1.0)
    assert torch.isfinite(adaptive) and adaptive > 0


def test_triplet_loss_uses_hardest_positive_and_negative():
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 4.0]])
    targets = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap = 3, d_an = 1; anchor 1: 3, sqrt(10); anchor 2: 3, 1; anchor 3: 3, 4
    d_ap = torch.tensor([3.0, 3.0, 3.0, 3.0])
    d_an = torch.tensor([1.0, math.sqrt(10), 1.0, 4.0])
    expected = torch.clamp(d_ap - d_an + 0.3, min=0).mean()
    torch.testing.assert_close(triplet_loss(features, targets, margin=0.3), expected, rtol=1e-5, atol=1e-5)
    soft = F.softplus(d_ap - d_an).mean()
    torch.testing.assert_close(triplet_loss(features, targets, margin=0.0), soft, rtol=1e-5, atol=1e-5)


def test_triplet_variants_run_and_respect_margin():
    torch.manual_seed(0)
    features = torch.randn(8, 5)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    weighted = triplet_loss(features, targets, margin=0.3, hard_mining=False)
    hard = triplet_loss(features, targets, margin=0.3, hard_mining=True)
    assert 0 <= weighted <= hard  # soft-weighted distances are never harder than the hardest ones
    cosine = triplet_loss(features, targets, margin=0.3, norm_feat=True)
    assert torch.isfinite(cosine)
    assert triplet_loss(features * 100, targets, margin=0.3, norm_feat=True) == pytest.approx(float(cosine), rel=1e-5)


def test_attention_diversity_is_the_sum_of_pairwise_cosines():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    # pair (a, b): cosines 0 and 1 -> mean 0.5
    torch.testing.assert_close(attention_diversity([a, b]), torch.tensor(0.5))
    torch.testing.assert_close(attention_diversity([a, a, a]), torch.tensor(3.0))  # three identical pairs


def test_attention_mass_is_the_scaled_per_image_sum():
    maps = torch.full((4, 2, 3, 3), 0.25)
    torch.testing.assert_close(attention_mass(maps, 0.001), torch.tensor(0.25 * 18 * 0.001))


def test_mutual_distillation_stops_gradients_at_the_targets():
    hard = torch.randn(4, 6, requires_grad=True)
    soft = torch.randn(4, 6, requires_grad=True)
    loss = mutual_distillation(hard * 2, soft * 3, hard, soft)
    assert float(loss.detach()) == pytest.approx(-0.5 * (F.cosine_similarity(hard, soft).mean() * 2).item(), rel=1e-5)
    same = mutual_distillation(soft, hard, hard, soft)
    assert float(same.detach()) == pytest.approx(-1.0, abs=1e-6)
    prediction = torch.randn(4, 6, requires_grad=True)
    mutual_distillation(prediction, prediction, hard, soft).backward()
    assert hard.grad is None and soft.grad is None and prediction.grad is not None


def test_disabling_diversity_drops_its_terms_and_linear_logits_are_scaled():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, embedding_dim=8, num_classes=4, classifier="linear", cls_scale=2.0,
                                    fusion=False, distillation=False))
    x = torch.rand(4, 3, 64, 32) * 255
    targets = torch.tensor([0, 0, 1, 1])
    outputs = model(x)
    losses = MDPRLoss(LossConfig(diversity=False))(outputs, targets)
    assert not any("diversity" in name for name in losses)
    assert "loss_attn_bap3_cls" in losses and "loss_fusion_cls" not in losses
    expected = cross_entropy(outputs.hard_global.logits * 2.0, targets, 0.1)
    torch.testing.assert_close(losses["loss_hard_global_cls"], expected)


def test_losses_are_finite_under_mixed_precision():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, embedding_dim=8, num_classes=4))
    x = torch.rand(4, 3, 64, 32) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = MDPRLoss(LossConfig())(model(x), torch.tensor([0, 0, 1, 1]))
    assert len(losses) == 19
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), losses
    sum(losses.values()).backward()
