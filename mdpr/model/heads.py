"""Embedding head: pooling -> BNNeck -> (training) classifier logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mdpr.errors import MdprError
from mdpr.model.layers import GeM

CLASSIFIERS = ("circle", "linear")


@dataclass
class HeadOutput:
    """Training-mode output of one :class:`EmbeddingHead`.

    ``features``: the BNNeck output (N, D) (used by the triplet loss; fast-reid's NECK_FEAT "after").
    ``logits``: raw classifier scores (N, C): cosine similarities for the circle classifier, plain dot
    products for the linear one (margins and scale are applied by :mod:`mdpr.losses`); ``None`` when the
    model has no classifier (``num_classes == 0``).
    """

    features: torch.Tensor
    logits: Optional[torch.Tensor]


class Classifier(nn.Module):
    """Class-weight matrix ``(num_classes, dim)``; ``circle`` scores normalised features against normalised weights."""

    def __init__(self, dim: int, num_classes: int, kind: str = "circle") -> None:
        super().__init__()
        if kind not in CLASSIFIERS:
            raise MdprError(f"Unknown classifier '{kind}' (model.classifier); use one of {', '.join(CLASSIFIERS)}.")
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "circle":
            return F.linear(F.normalize(features), F.normalize(self.weight))
        return F.linear(features, self.weight)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_classes={self.weight.shape[0]}, dim={self.weight.shape[1]}"


class EmbeddingHead(nn.Module):
    """fast-reid's ``EmbeddingHead`` as MDPR configures it.

    ``pool``: GeM with learnable exponent for feature maps, or nothing when the input is already a vector
    (the bilinear-attention-pooling heads). ``bnneck``: BatchNorm whose bias is frozen (requires_grad False,
    kept at its loaded value). Eval mode returns the BNNeck output; training mode a :class:`HeadOutput`.
    """

    def __init__(self, dim: int, num_classes: int = 0, pool: bool = True, classifier: str = "circle") -> None:
        super().__init__()
        self.dim = dim
        self.pool = GeM() if pool else nn.Identity()
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = Classifier(dim, num_classes, classifier) if num_classes > 0 else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The BNNeck output (N, dim): the head's part of the eval feature (BatchNorm in the module's current mode)."""
        if x.dim() == 4 and isinstance(self.pool, nn.Identity):
            x = x.flatten(1)
        return self.bnneck(self.pool(x))

    def forward_train(self, x: torch.Tensor) -> HeadOutput:
        """BNNeck features and classifier logits for the losses."""
        features = self.embed(x)
        logits = self.classifier(features) if self.classifier is not None else None
        return HeadOutput(features=features, logits=logits)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, HeadOutput]:
        """:meth:`forward_train` in training mode, :meth:`embed` in eval mode (call those for a precise type)."""
        return self.forward_train(x) if self.training else self.embed(x)
