"""MDPR training losses, numerically equivalent to the official implementation (fast-reid fork).

``MDPRLoss(loss_cfg)(outputs, targets)`` returns a dict of named scalar terms, in the official order::

    loss_hard_global_cls, loss_hard_global_triplet,
    loss_hard_part_{i}_cls, loss_hard_part_{i}_triplet            (i = 0..num_parts-1)
    loss_attn_feature4_cls, loss_attn_feature4_triplet,
    loss_attn_bap4_cls, loss_diversity_loss_4, loss_diversity_loss_reg_4,
    loss_attn_feature3_cls, loss_attn_feature3_triplet,
    loss_attn_bap3_cls, loss_diversity_loss_3, loss_diversity_loss_reg_3,
    loss_fusion_cls, loss_fusion_triplet,
    loss_mutual_distillation

(19 terms in the paper's setting). Terms of disabled components are absent. The total loss is the plain sum.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from mdpr.config import LossConfig
from mdpr.errors import MdprError
from mdpr.model.heads import HeadOutput
from mdpr.model.network import AttentionOutput, MDPROutputs


def circle_logits(cosine: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """Circle-softmax logits (Sun et al., 2020) from cosine similarities (N, C).

    Positive: ``s * [1 + m - cos]_+ * (cos - (1 - m))``; negatives: ``s * [cos + m]_+ * (cos - m)``;
    the ``[.]_+`` weights are treated as constants (detached), as in the official code.
    """
    alpha_p = torch.clamp_min(1.0 + margin - cosine.detach(), 0.0)
    alpha_n = torch.clamp_min(cosine.detach() + margin, 0.0)
    positive = F.one_hot(targets, cosine.shape[1]).to(torch.bool)
    logits = torch.where(positive, alpha_p * (cosine - (1.0 - margin)), alpha_n * (cosine - margin))
    return logits * scale


def classifier_logits(head: HeadOutput, targets: torch.Tensor, kind: str, scale: float, margin: float) -> torch.Tensor:
    """The logits the cross-entropy sees for one head: circle-softmax over cosines, or scaled linear scores."""
    if head.logits is None:
        raise MdprError("The model has no classifier (model.num_classes = 0); set model.num_classes to the number "
                        "of training identities to train it.")
    if kind == "circle":
        return circle_logits(head.logits, targets, scale, margin)
    return head.logits * scale


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1, alpha: float = 0.2) -> torch.Tensor:
    """Label-smoothed cross-entropy: target ``1 - eps``, every other class ``eps / (C - 1)``.

    ``epsilon < 0`` selects fast-reid's adaptive smoothing (``eps = alpha * p_target``). The per-sample losses are
    averaged over the samples with a non-zero loss (fast-reid's convention).
    """
    logits = logits.float()  # mixed precision: the loss itself is computed in float32
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    with torch.no_grad():
        if epsilon >= 0:
            smooth = torch.full((logits.shape[0], 1), float(epsilon), dtype=logits.dtype, device=logits.device)
        else:
            smooth = alpha * F.softmax(logits, dim=1).gather(1, targets[:, None])
        soft_targets = (smooth / max(num_classes - 1, 1)).expand_as(log_probs).clone()
        soft_targets.scatter_(1, targets[:, None], 1.0 - smooth)
    per_sample = -(soft_targets * log_probs).sum(dim=1)
    with torch.no_grad():
        count = max(int(torch.count_nonzero(per_sample)), 1)
    return per_sample.sum() / count


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise euclidean distances (N, N) via the expanded square, clamped at 1e-12 before the square root."""
    squared = x.pow(2).sum(dim=1, keepdim=True)
    dist = squared + squared.t() - 2.0 * (x @ x.t())
    return dist.clamp(min=1e-12).sqrt()


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    return 2.0 - 2.0 * (x @ x.t())


def _softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
    exp = torch.exp(dist - max_v)
    return exp * mask / (torch.sum(exp * mask, dim=1, keepdim=True) + 1e-6)


def triplet_loss(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3, norm_feat: bool = False,
                 hard_mining: bool = True) -> torch.Tensor:
    """Batch triplet loss: hardest positive / negative per anchor (or softmax-weighted when ``hard_mining`` is False).

    ``margin > 0``: ``mean(max(0, d_ap - d_an + margin))``; ``margin <= 0``: soft margin ``mean(log(1 + exp(d_ap - d_an)))``.
    """
    features = features.float()  # under mixed precision, |x|^2 - 2xy in half precision can overflow or cancel
    dist = cosine_distances(features) if norm_feat else euclidean_distances(features)
    same = targets[:, None].eq(targets[None, :])
    is_pos, is_neg = same.to(dist.dtype), (~same).to(dist.dtype)
    if hard_mining:
        dist_ap = torch.max(dist * is_pos, dim=1)[0]
        dist_an = torch.min(dist * is_neg + is_pos * 1e9, dim=1)[0]
    else:
        dist_ap = torch.sum(dist * is_pos * _softmax_weights(dist * is_pos, is_pos), dim=1)
        dist_an = torch.sum(dist * is_neg * _softmax_weights(-dist * is_neg, is_neg), dim=1)
    y = torch.ones_like(dist_an)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, y)
    if torch.isinf(loss):
        loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=0.3)
    return loss


def attention_diversity(parts: List[torch.Tensor]) -> torch.Tensor:
    """Sum over part pairs i < j of the batch-mean cosine similarity of the pooled part embeddings
    (the official ``cross_catgory_loss``; it pushes different attention maps onto different content)."""
    flat = [p.flatten(1).float() for p in parts]
    unit = [p / p.norm(dim=1, keepdim=True) for p in flat]
    loss = unit[0].new_zeros(())
    for i in range(len(unit)):
        for j in range(i + 1, len(unit)):
            loss = loss + (unit[i] * unit[j]).sum(dim=-1).mean()
    return loss


def attention_mass(maps: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention-mass regulariser: ``scale * sum(maps) / N`` (favours leaving background to the background channel)."""
    return maps.float().sum() / maps.shape[0] * scale


def mutual_distillation(hard_prediction: torch.Tensor, soft_prediction: torch.Tensor, hard_features: torch.Tensor,
                        soft_features: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the targets (SimSiam style)."""
    hard_prediction, soft_prediction = hard_prediction.float(), soft_prediction.float()
    hard_features, soft_features = hard_features.float(), soft_features.float()
    return -0.5 * (F.cosine_similarity(hard_prediction, soft_features.detach()).mean()
                   + F.cosine_similarity(soft_prediction, hard_features.detach()).mean())


class MDPRLoss:
    """All MDPR loss terms for one batch; ``__call__`` returns ``{name: scalar tensor}`` in the official order."""

    def __init__(self, cfg: Optional[LossConfig] = None) -> None:
        self.cfg = cfg or LossConfig()

    def _ce(self, head: HeadOutput, targets: torch.Tensor, outputs: MDPROutputs) -> torch.Tensor:
        logits = classifier_logits(head, targets, outputs.classifier, outputs.cls_scale, outputs.cls_margin)
        return cross_entropy(logits, targets, self.cfg.ce_epsilon)

    def _triplet(self, head: HeadOutput, targets: torch.Tensor) -> torch.Tensor:
        return triplet_loss(head.features, targets, self.cfg.triplet_margin, self.cfg.triplet_norm_feat,
                            self.cfg.triplet_hard_mining)

    def _embedding_terms(self, losses: Dict[str, torch.Tensor], name: str, head: HeadOutput, targets: torch.Tensor,
                         outputs: MDPROutputs) -> None:
        losses[f"loss_{name}_cls"] = self._ce(head, targets, outputs)
        losses[f"loss_{name}_triplet"] = self._triplet(head, targets)

    def _attention_terms(self, losses: Dict[str, torch.Tensor], level: int, attention: AttentionOutput,
                         targets: torch.Tensor, outputs: MDPROutputs) -> None:
        losses[f"loss_attn_bap{level}_cls"] = self._ce(attention.head, targets, outputs)
        if self.cfg.diversity:
            losses[f"loss_diversity_loss_{level}"] = attention_diversity(attention.parts)
            losses[f"loss_diversity_loss_reg_{level}"] = attention_mass(attention.maps, self.cfg.diversity_scale)

    def __call__(self, outputs: MDPROutputs, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not isinstance(outputs, MDPROutputs):
            raise MdprError("MDPRLoss needs the training-mode output of an MDPR model; call model.train() before "
                            "the forward pass.")
        targets = targets.long().to(self._device(outputs))
        losses: Dict[str, torch.Tensor] = {}
        if outputs.hard_global is not None:
            self._embedding_terms(losses, "hard_global", outputs.hard_global, targets, outputs)
            for i, part in enumerate(outputs.hard_parts):
                self._embedding_terms(losses, f"hard_part_{i}", part, targets, outputs)
        # the soft branch fills these four together; each term keeps its place in the sum's order
        if outputs.soft_layer4 is not None:
            self._embedding_terms(losses, "attn_feature4", outputs.soft_layer4, targets, outputs)
        if outputs.attention_layer4 is not None:
            self._attention_terms(losses, 4, outputs.attention_layer4, targets, outputs)
        if outputs.soft_layer3 is not None:
            self._embedding_terms(losses, "attn_feature3", outputs.soft_layer3, targets, outputs)
        if outputs.attention_layer3 is not None:
            self._attention_terms(losses, 3, outputs.attention_layer3, targets, outputs)
        if outputs.fusion is not None:
            self._embedding_terms(losses, "fusion", outputs.fusion, targets, outputs)
        if outputs.distillation is not None:
            d = outputs.distillation
            losses["loss_mutual_distillation"] = mutual_distillation(d.hard_prediction, d.soft_prediction,
                                                                     d.hard_features, d.soft_features)
        return losses

    @staticmethod
    def _device(outputs: MDPROutputs) -> torch.device:
        for head in (outputs.hard_global, outputs.soft_layer4):
            if head is not None:
                return head.features.device
        raise MdprError("The model output holds no branch output.")
