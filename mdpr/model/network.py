"""The MDPR network: a shared stem, a Hard Content Branch, a Soft Content Branch, fusion and predictors.

The backbone comes from a registered family (:mod:`mdpr.model.backbone`, ``model.backbone``): its stem is shared,
its two stages are copied into each branch as ``layer3`` and ``layer4``. Shapes for the paper's setting (ResNet-50-IBN, 384x192 input, E = 512, 2 parts, 2 attention maps)::

    images (N,3,384,192) 0..255 -> normalised
    stem: conv1..layer2                                  -> (N,512,48,24)
    hard branch: layer3 -> layer4 (last stride 1)        -> (N,2048,24,12)
        global embedding (1x1 conv-BN-ReLU)              -> (N,512,24,12)  -> head -> 512
        2 horizontal stripes (N,2048,12,12) -> embedding -> (N,512,12,12)  -> head -> 512 each
    soft branch: layer3 (N,1024,24,12) -> layer4         -> (N,2048,24,12)
        layer4 embedding                                 -> (N,512,24,12)  -> head -> 512
        layer3 refine (1024->1024) -> layer3 embedding   -> (N,512,24,12)  -> head -> 512
        [training] attention makers -> (N,3,24,12) -> softmax, drop background -> (N,2,24,12)
        [training] bilinear attention pooling            -> (N,1024)       -> head (CE only)
    fusion (4 conv blocks)                               -> (N,2048,24,12) -> head -> 2048
    eval feature = cat(hard global, hard parts, soft layer4, soft layer3, fusion) = 4608

See ``docs/model.md`` for the ablation switches and their feature layouts.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union, cast

import torch
from torch import nn

from mdpr.config import InputConfig, ModelConfig
from mdpr.errors import MdprError
from mdpr.model.backbone import Backbone, build_backbone, get_backbone_family
from mdpr.model.heads import CLASSIFIERS, EmbeddingHead, HeadOutput
from mdpr.model.layers import (
    AttentionConv,
    AttentionGuide,
    BilinearAttentionPooling,
    Embedding,
    Fusion,
    Predictor,
    attention_softmax,
)

if TYPE_CHECKING:
    from mdpr.model.loading import LoadReport

BRANCHES = ("both", "hard", "soft")


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Validate ``cfg`` and return a copy with switches that cannot apply turned off.

    A single branch ("hard" or "soft") has nothing to fuse or distil with, so ``fusion`` and
    ``distillation`` become False; "hard" also has no attention, so ``attention_guidance`` becomes False.
    """
    cfg = copy.deepcopy(cfg)
    family = get_backbone_family(cfg.backbone)
    if family.validate is not None:
        family.validate(cfg)
    if cfg.branches not in BRANCHES:
        raise MdprError(f"Unknown model.branches '{cfg.branches}'; use one of {', '.join(BRANCHES)}.")
    if cfg.classifier not in CLASSIFIERS:
        raise MdprError(f"Unknown model.classifier '{cfg.classifier}'; use one of {', '.join(CLASSIFIERS)}.")
    for name in ("embedding_dim", "num_parts", "num_attention"):
        if getattr(cfg, name) < 1:
            raise MdprError(f"model.{name} must be at least 1, got {getattr(cfg, name)}.")
    if cfg.num_classes < 0:
        raise MdprError(f"model.num_classes must be >= 0 (0 = no classifier), got {cfg.num_classes}.")
    if cfg.branches != "both":
        cfg.fusion = False
        cfg.distillation = False
    if cfg.branches == "hard":
        cfg.attention_guidance = False
    return cfg


@dataclass
class DistillationOutput:
    """Mutual distillation inputs: each branch's feature and the predictor's guess of the *other* branch's."""

    hard_features: torch.Tensor
    soft_features: torch.Tensor
    hard_prediction: torch.Tensor  #: predictors.hard(hard_features), pulled towards soft_features
    soft_prediction: torch.Tensor  #: predictors.soft(soft_features), pulled towards hard_features


@dataclass
class AttentionOutput:
    """One level (layer3 or layer4) of the Soft Content Branch's attention in training mode."""

    head: HeadOutput  #: classification of the bilinear-attention-pooled feature
    maps: torch.Tensor  #: (N, M, H, W) softmax attention maps, background channel dropped
    parts: List[torch.Tensor]  #: M GeM-pooled part embeddings (N, E), for the diversity loss


@dataclass
class MDPROutputs:
    """Training-mode output of :class:`MDPR`, consumed by :class:`mdpr.losses.MDPRLoss`.

    Fields of a disabled component are ``None`` (or empty lists).
    """

    hard_global: Optional[HeadOutput] = None
    hard_parts: List[HeadOutput] = field(default_factory=list)
    soft_layer4: Optional[HeadOutput] = None
    soft_layer3: Optional[HeadOutput] = None
    attention_layer4: Optional[AttentionOutput] = None
    attention_layer3: Optional[AttentionOutput] = None
    fusion: Optional[HeadOutput] = None
    distillation: Optional[DistillationOutput] = None
    classifier: str = "circle"  #: how the logits were computed ("circle": cosines, "linear": dot products)
    cls_scale: float = 64.0
    cls_margin: float = 0.35


def _split_parts(feature_map: torch.Tensor, num_parts: int) -> Tuple[torch.Tensor, ...]:
    parts = torch.chunk(feature_map, num_parts, dim=2)  # horizontal stripes, top to bottom (as the official code)
    if len(parts) != num_parts:
        raise MdprError(f"The feature map is only {feature_map.shape[2]} rows high, too low for "
                        f"{num_parts} parts; use a taller input (input.size_*) or fewer model.num_parts.")
    return parts


class HardBranch(nn.Module):
    """Hard Content Branch: own layer3+layer4, a global embedding and uniform horizontal part embeddings."""

    def __init__(self, backbone: Backbone, cfg: ModelConfig) -> None:
        super().__init__()
        channels = backbone.channels[1]
        classes, kind = cfg.num_classes, cfg.classifier
        self.num_parts = cfg.num_parts
        self.layer3 = copy.deepcopy(backbone.stages[0])
        self.layer4 = copy.deepcopy(backbone.stages[1])
        self.global_embedding = Embedding(channels, cfg.embedding_dim)
        self.part_embeddings = nn.ModuleList(Embedding(channels, cfg.embedding_dim) for _ in range(cfg.num_parts))
        self.global_head = EmbeddingHead(cfg.embedding_dim, classes, classifier=kind)
        self.part_heads = nn.ModuleList(EmbeddingHead(cfg.embedding_dim, classes, classifier=kind)
                                        for _ in range(cfg.num_parts))

    def forward(self, shared: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Embedded global map (N,E,h,w) and part maps [(N,E,h/P,w)] * P."""
        x = self.layer4(self.layer3(shared))
        parts = _split_parts(x, self.num_parts)
        return self.global_embedding(x), [embed(p) for embed, p in zip(self.part_embeddings, parts)]


class SoftBranch(nn.Module):
    """Soft Content Branch: own layer3+layer4, layer3/layer4 embeddings, attention maps and bilinear attention pooling."""

    def __init__(self, backbone: Backbone, cfg: ModelConfig) -> None:
        super().__init__()
        channels3, channels4 = backbone.channels
        classes, kind = cfg.num_classes, cfg.classifier
        dim = cfg.embedding_dim
        self.num_attention = cfg.num_attention
        maps = cfg.num_attention + 1  # + background
        self.layer3 = copy.deepcopy(backbone.stages[0])
        self.layer4 = copy.deepcopy(backbone.stages[1])
        self.layer4_embedding = Embedding(channels4, dim)
        self.layer3_refine = Embedding(channels3, channels3)
        self.layer3_embedding = Embedding(channels3, dim)
        self.layer4_attention = AttentionConv(channels4, maps)
        self.attention_guide = AttentionGuide(maps) if cfg.attention_guidance else None
        self.layer3_attention = AttentionConv(channels3 + (maps if cfg.attention_guidance else 0), maps)
        self.layer3_bap = BilinearAttentionPooling(channels3, cfg.num_attention, dim)
        self.layer4_bap = BilinearAttentionPooling(channels4, cfg.num_attention, dim)
        self.layer4_head = EmbeddingHead(dim, classes, classifier=kind)
        self.layer3_head = EmbeddingHead(dim, classes, classifier=kind)
        self.layer4_bap_head = EmbeddingHead(dim * cfg.num_attention, classes, pool=False, classifier=kind)
        self.layer3_bap_head = EmbeddingHead(dim * cfg.num_attention, classes, pool=False, classifier=kind)

    def forward(self, shared: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone maps and embedded maps (no attention; see :meth:`attention`)."""
        layer3 = self.layer3(shared)
        layer4 = self.layer4(layer3)
        layer3_refined = self.layer3_refine(layer3)
        return {"layer3": layer3, "layer4": layer4, "layer3_refined": layer3_refined,
                "layer4_embedded": self.layer4_embedding(layer4),
                "layer3_embedded": self.layer3_embedding(layer3_refined)}

    def attention_logits(self, maps: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attention-maker outputs (N, M+1, H, W) for layer4 and layer3 (layer3's guided by layer4's)."""
        logits4 = self.layer4_attention(maps["layer4"])
        layer3 = maps["layer3"]
        if self.attention_guide is not None:
            layer3 = torch.cat([layer3, self.attention_guide(logits4, tuple(layer3.shape[-2:]))], dim=1)
        return logits4, self.layer3_attention(layer3)

    def attention(self, maps: Dict[str, torch.Tensor]) -> Tuple[AttentionOutput, AttentionOutput]:
        logits4, logits3 = self.attention_logits(maps)
        attention4 = attention_softmax(logits4, self.num_attention)
        attention3 = attention_softmax(logits3, self.num_attention)
        pooled4, parts4 = self.layer4_bap(attention4, maps["layer4"])
        pooled3, parts3 = self.layer3_bap(attention3, maps["layer3_refined"])
        return (AttentionOutput(self.layer4_bap_head.forward_train(pooled4), attention4, parts4),
                AttentionOutput(self.layer3_bap_head.forward_train(pooled3), attention3, parts3))


class MDPR(nn.Module):
    """MDPR person re-identification network.

    Input: float images (N, 3, H, W), RGB, 0..255; the model normalises them itself (never in place).
    Eval mode: returns the (N, :attr:`feature_dim`) concatenated feature (not L2-normalised).
    Training mode: returns :class:`MDPROutputs` for :class:`mdpr.losses.MDPRLoss`.
    :meth:`forward_features` and :meth:`forward_train` are the two paths with their precise types.
    """

    #: set by :func:`mdpr.model.build_model` / :func:`mdpr.model.load_model`: what the initialisation or the
    #: checkpoint could not fill, and the class list a checkpoint was trained on
    pretrained_report: Optional[LoadReport] = None
    load_report: Optional[LoadReport] = None
    classes: Optional[List[Any]] = None

    #: MDPR's own names of a backbone's three parts: the stem, and each branch's copies of the two stages
    STAGE_NAMES = ("layer3", "layer4")

    def __init__(self, cfg: ModelConfig, input_cfg: Optional[InputConfig] = None) -> None:
        super().__init__()
        cfg = resolve_model_config(cfg)
        input_cfg = input_cfg or InputConfig()
        self.config = cfg
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.register_buffer("pixel_mean", torch.tensor(input_cfg.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(input_cfg.pixel_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        backbone = build_backbone(cfg)
        self.stem = backbone.stem
        self.hard_branch = HardBranch(backbone, cfg) if cfg.branches in ("both", "hard") else None
        self.soft_branch = SoftBranch(backbone, cfg) if cfg.branches in ("both", "soft") else None
        self.fusion = Fusion(cfg.embedding_dim) if cfg.fusion else None
        self.fusion_head = (EmbeddingHead(4 * cfg.embedding_dim, cfg.num_classes, classifier=cfg.classifier)
                            if cfg.fusion else None)
        self.predictors = (nn.ModuleDict({"hard": Predictor(cfg.embedding_dim), "soft": Predictor(cfg.embedding_dim)})
                           if cfg.distillation else None)

    # ------------------------------------------------------------------ description
    def backbone_prefixes(self) -> List[Tuple[int, str]]:
        """``(part, state-dict prefix)`` of every backbone copy in this model: part 0 is the stem (``"stem."``),
        1 and 2 the branches' layer3 and layer4 (``"hard_branch.layer3."`` ...), in this order."""
        pairs = [(0, "stem.")]
        for branch in ("hard_branch", "soft_branch"):
            if getattr(self, branch) is not None:
                pairs += [(i, f"{branch}.{name}.") for i, name in enumerate(self.STAGE_NAMES, start=1)]
        return pairs

    @property
    def feature_layout(self) -> List[Tuple[str, int]]:
        """``[(name, dim), ...]`` of the eval feature's blocks, in concatenation order."""
        e, layout = self.config.embedding_dim, []
        if self.hard_branch is not None:
            layout += [("hard_global", e)] + [(f"hard_part_{i}", e) for i in range(self.config.num_parts)]
        if self.soft_branch is not None:
            layout += [("soft_layer4", e), ("soft_layer3", e)]
        if self.fusion is not None:
            layout.append(("fusion", 4 * e))
        return layout

    @property
    def feature_dim(self) -> int:
        """Dimension D of the eval feature."""
        return sum(dim for _, dim in self.feature_layout)

    # ------------------------------------------------------------------ forward
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - pixel_mean) / pixel_std`` as a new tensor (the caller's tensor is left untouched)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise MdprError(f"MDPR expects images shaped (N, 3, H, W), got {tuple(images.shape)}.")
        mean = self.pixel_mean.to(images.dtype) if images.is_floating_point() else self.pixel_mean
        std = self.pixel_std.to(images.dtype) if images.is_floating_point() else self.pixel_std
        return (images - mean) / std

    def _maps(self, images: torch.Tensor) -> Tuple[Optional[Tuple[torch.Tensor, List[torch.Tensor]]],
                                                   Optional[Dict[str, torch.Tensor]], Optional[torch.Tensor]]:
        """The embedded maps both paths share: (hard global, hard parts), the soft branch's maps, the fused map."""
        shared = self.stem(self.normalize(images))
        hard = self.hard_branch(shared) if self.hard_branch is not None else None
        soft = self.soft_branch(shared) if self.soft_branch is not None else None
        fused = None
        if self.fusion is not None and hard is not None and soft is not None:
            fused = self.fusion(hard[0], hard[1], soft["layer4_embedded"], soft["layer3_embedded"])
        return hard, soft, fused

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The eval feature (N, :attr:`feature_dim`), with BatchNorm in the current mode (call ``eval()`` first)."""
        hard, soft, fused = self._maps(images)
        # the attention / bilinear-pooling path never reaches the eval feature, so it is skipped here
        feats: List[torch.Tensor] = []
        if self.hard_branch is not None and hard is not None:
            feats.append(self.hard_branch.global_head.embed(hard[0]))
            feats += [head.embed(p) for head, p in zip(self._part_heads(), hard[1])]
        if self.soft_branch is not None and soft is not None:
            feats += [self.soft_branch.layer4_head.embed(soft["layer4_embedded"]),
                      self.soft_branch.layer3_head.embed(soft["layer3_embedded"])]
        if self.fusion_head is not None and fused is not None:
            feats.append(self.fusion_head.embed(fused))
        return torch.cat(feats, dim=1)

    def forward_train(self, images: torch.Tensor) -> MDPROutputs:
        """Every head's features and logits, the attention outputs and the distillation inputs, for the losses."""
        if images.shape[0] < 2:
            raise MdprError("Training MDPR needs at least 2 images per batch (BatchNorm and the triplet loss use "
                            "batch statistics); use a larger batch or call model.eval() for inference.")
        hard, soft, fused = self._maps(images)
        out = MDPROutputs(classifier=self.config.classifier, cls_scale=self.config.cls_scale,
                          cls_margin=self.config.cls_margin)
        if self.hard_branch is not None and hard is not None:
            out.hard_global = self.hard_branch.global_head.forward_train(hard[0])
            out.hard_parts = [head.forward_train(p) for head, p in zip(self._part_heads(), hard[1])]
        if self.soft_branch is not None and soft is not None:
            out.soft_layer4 = self.soft_branch.layer4_head.forward_train(soft["layer4_embedded"])
            out.attention_layer4, out.attention_layer3 = self.soft_branch.attention(soft)
            out.soft_layer3 = self.soft_branch.layer3_head.forward_train(soft["layer3_embedded"])
        if self.fusion_head is not None and fused is not None:
            out.fusion = self.fusion_head.forward_train(fused)
        if self.predictors is not None and out.hard_global is not None and out.soft_layer4 is not None:
            z_hard, z_soft = out.hard_global.features, out.soft_layer4.features
            out.distillation = DistillationOutput(z_hard, z_soft, self.predictors["hard"](z_hard),
                                                  self.predictors["soft"](z_soft))
        return out

    def forward(self, images: torch.Tensor) -> Union[torch.Tensor, MDPROutputs]:
        """:meth:`forward_train` in training mode, :meth:`forward_features` in eval mode."""
        return self.forward_train(images) if self.training else self.forward_features(images)

    def _part_heads(self) -> List[EmbeddingHead]:
        assert self.hard_branch is not None
        return cast(List[EmbeddingHead], list(self.hard_branch.part_heads))

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Soft-branch attention maps ``{"layer4": (N,M,h,w), "layer3": (N,M,h,w)}`` (softmax, background dropped),
        computed with the current BatchNorm mode (call ``model.eval()`` first for inference)."""
        if self.soft_branch is None:
            raise MdprError("This model has no Soft Content Branch (model.branches='hard'), so it has no attention maps.")
        soft = self.soft_branch(self.stem(self.normalize(images)))
        logits4, logits3 = self.soft_branch.attention_logits(soft)
        m = self.config.num_attention
        return {"layer4": attention_softmax(logits4, m), "layer3": attention_softmax(logits3, m)}

    def extra_repr(self) -> str:
        fields = dataclasses.asdict(self.config)
        fields.pop("pretrained", None)
        fields.pop("init", None)
        return ", ".join(f"{k}={v}" for k, v in fields.items()) + f", feature_dim={self.feature_dim}"
