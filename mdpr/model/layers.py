"""Building blocks of MDPR: IBN-a normalisation, GeM pooling, embeddings, attention makers, bilinear attention pooling, fusion blocks."""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def kaiming_init(module: nn.Module) -> None:
    """fast-reid's ``weights_init_kaiming``: convs kaiming-normal (fan out), BN weight 1 / bias 0, linears N(0, 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-a): InstanceNorm on the first half of the channels, BatchNorm on the rest.

    Weight loading recognises this module: a plain BatchNorm entry in a file is split into its two halves.
    """

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.instance_channels = planes // 2
        self.IN = nn.InstanceNorm2d(self.instance_channels, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.instance_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.instance_channels, x.shape[1] - self.instance_channels], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent: ``mean(clamp(x, eps) ** p) ** (1 / p)`` over H, W.

    Returns ``(N, C)``. ``p`` starts at 3 (fast-reid's ``GeneralizedMeanPoolingP``).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.3f}, eps={self.eps}"


class Embedding(nn.Module):
    """1x1 convolution (no bias) -> BatchNorm -> ReLU on a feature map (channel reduction before pooling)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class AttentionConv(nn.Module):
    """Attention maker: ``ReLU(BN(conv1x1(x) + conv3x3(x)))`` with one channel per attention map plus a background one."""

    def __init__(self, in_channels: int, num_maps: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, num_maps, 1, bias=False)
        self.conv3x3 = nn.Conv2d(in_channels, num_maps, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(num_maps)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv1x1(x) + self.conv3x3(x)))


class AttentionGuide(nn.Module):
    """Turns layer4's attention logits into extra input channels for layer3's attention maker.

    The official code "upsamples" with ``nn.Upsample(scale_factor=1)``, an identity, because with last
    stride 1 layer3 and layer4 share the same resolution; we resample to layer3's size (bilinear,
    align_corners=True), which is the same identity in that case.
    """

    def __init__(self, num_maps: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_maps, num_maps, 1, bias=False)
        kaiming_init(self)

    def forward(self, attention_logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if tuple(attention_logits.shape[-2:]) != tuple(size):
            attention_logits = F.interpolate(attention_logits, size=size, mode="bilinear", align_corners=True)
        return F.relu(self.conv(attention_logits))


def attention_softmax(logits: torch.Tensor, num_maps: int) -> torch.Tensor:
    """Softmax over the ``num_maps + 1`` channels, then drop the last (background) channel."""
    return torch.softmax(logits, dim=1)[:, :num_maps]


class BilinearAttentionPooling(nn.Module):
    """Bilinear attention pooling: for each attention map ``a_i``, ``GeM(Embedding_i(features * a_i))``.

    Returns ``(ReLU(concat of the pooled parts)) (N, M * E)`` and the list of pooled parts ``[(N, E)] * M``
    (the latter feed the attention diversity loss). One GeM exponent is shared by all parts.
    """

    def __init__(self, in_channels: int, num_maps: int, embedding_dim: int) -> None:
        super().__init__()
        self.pool = GeM()
        self.part_embeddings = nn.ModuleList(Embedding(in_channels, embedding_dim) for _ in range(num_maps))

    def forward(self, attention: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        parts = [self.pool(embed(features * attention[:, i:i + 1]))
                 for i, embed in enumerate(self.part_embeddings)]
        return F.relu(torch.cat(parts, dim=1)), parts


class FusionBlock(nn.Module):
    """conv1x1 -> conv3x3 (no activation in between, no bias) -> BatchNorm -> ReLU, channels preserved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv3x3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv3x3(self.conv1x1(x))))


class Fusion(nn.Module):
    """Fuses the two branches' embedded maps into one ``4 * E``-channel map.

    ``merge_parts`` re-assembles the part maps along the height, ``hard`` mixes them with the global
    hard map, ``soft`` mixes the soft layer4 and layer3 maps, and ``joint`` mixes both halves.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.merge_parts = FusionBlock(embedding_dim)
        self.hard = FusionBlock(2 * embedding_dim)
        self.soft = FusionBlock(2 * embedding_dim)
        self.joint = FusionBlock(4 * embedding_dim)

    def forward(self, hard_global: torch.Tensor, hard_parts: List[torch.Tensor], soft_layer4: torch.Tensor,
                soft_layer3: torch.Tensor) -> torch.Tensor:
        merged_parts = self.merge_parts(torch.cat(hard_parts, dim=2))
        hard = self.hard(torch.cat([merged_parts, hard_global], dim=1))
        soft = self.soft(torch.cat([soft_layer4, soft_layer3], dim=1))
        return self.joint(torch.cat([hard, soft], dim=1))


class Predictor(nn.Module):
    """Mutual-distillation predictor MLP: Linear (no bias) -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))
