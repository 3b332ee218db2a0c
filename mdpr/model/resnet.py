"""The built-in ``resnet`` backbone family: ResNet-18/34/50/101/152 with optional IBN-a, as fast-reid builds it.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so torchvision,
IBN-Net and LUPerson checkpoints load by name. Two details differ from torchvision and matter for
numerical equivalence with fast-reid models:

* the stem max-pool is ``MaxPool2d(3, stride=2, padding=0, ceil_mode=True)`` (torchvision: padding 1);
* with IBN-a, ``bn1`` of every block in layer1..layer3 (never layer4) is an :class:`IBN`: instance norm
  on the first ``planes // 2`` channels, batch norm on the rest (keys ``bn1.IN.*`` / ``bn1.BN.*``).

The stride of a bottleneck sits in its 3x3 convolution (ResNet v1.5), and ``layer4`` keeps a
downsample projection even with last stride 1 (its channel count changes).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
from torch import nn

from mdpr.config import ModelConfig
from mdpr.errors import MdprError
from mdpr.model.backbone import Backbone, BackboneParts, register_backbone_family
from mdpr.model.formats import indexed_count
from mdpr.model.layers import IBN

#: blocks per stage and block type for each supported depth
RESNET_STAGES: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _norm(planes: int, ibn: bool) -> nn.Module:
    return IBN(planes) if ibn else nn.BatchNorm2d(planes)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ibn: bool = False,
                 downsample: Union[nn.Module, None] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ibn: bool = False,
                 downsample: Union[nn.Module, None] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_stage(block: Type[Union[BasicBlock, Bottleneck]], inplanes: int, planes: int, blocks: int,
                stride: int, ibn: bool) -> nn.Sequential:
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out_planes, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_planes))
    layers = [block(inplanes, planes, stride, ibn, downsample)]
    layers += [block(out_planes, planes, 1, ibn) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def check_depth(depth: int) -> None:
    if depth not in RESNET_STAGES:
        raise MdprError(f"Unsupported ResNet depth {depth}; use one of {', '.join(map(str, RESNET_STAGES))} "
                        f"(model.depth).")


def stage_channels(depth: int) -> List[int]:
    """Output channels of layer1..layer4 (e.g. ``[256, 512, 1024, 2048]`` for ResNet-50)."""
    check_depth(depth)
    expansion = 1 if RESNET_STAGES[depth][0] == "basic" else 4
    return [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]


class ResNet(nn.Module):
    """fast-reid's ResNet (no classifier): ``forward`` returns the layer4 feature map."""

    def __init__(self, depth: int = 50, ibn: bool = False, last_stride: int = 1) -> None:
        super().__init__()
        check_depth(depth)
        kind, blocks = RESNET_STAGES[depth]
        block: Type[Union[BasicBlock, Bottleneck]] = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # fast-reid's stem pool: no padding, ceil mode (a 384x192 input gives 96x48 after layer1 either way,
        # but the pooled windows differ from torchvision's padding=1 version)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        out = [64 * block.expansion, 128 * block.expansion, 256 * block.expansion]
        # IBN-a only in layer1..layer3
        self.layer1 = _make_stage(block, 64, 64, blocks[0], 1, ibn)
        self.layer2 = _make_stage(block, out[0], 128, blocks[1], 2, ibn)
        self.layer3 = _make_stage(block, out[1], 256, blocks[2], 2, ibn)
        self.layer4 = _make_stage(block, out[2], 512, blocks[3], last_stride, False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fast-reid's random initialisation (used when no pretrained weights are given)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x))


class ResNetStem(nn.Module):
    """The part of a :class:`ResNet` that MDPR's branches share: conv1, bn1, ReLU, max-pool, layer1, layer2.

    Its keys keep the torchvision names (``conv1.weight``, ``layer1.0.bn1.IN.weight`` ...), so a whole ResNet file
    holds them unprefixed.
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))


# --------------------------------------------------------------------------------------------- the family


def validate_resnet(cfg: ModelConfig) -> None:
    check_depth(cfg.depth)
    if cfg.last_stride != 1:
        raise MdprError(f"model.last_stride must be 1 for MDPR (layer3 and layer4 maps are fused at the same "
                        f"resolution), got {cfg.last_stride}.")


def build_resnet(cfg: ModelConfig) -> Backbone:
    """ResNet-``cfg.depth`` (IBN-a if ``cfg.ibn``): the stem up to layer2, and layer3 / layer4."""
    validate_resnet(cfg)
    resnet = ResNet(cfg.depth, cfg.ibn, cfg.last_stride)
    channels = stage_channels(cfg.depth)
    return Backbone(stem=ResNetStem(resnet), stages=(resnet.layer3, resnet.layer4), channels=(channels[2], channels[3]))


def describe_resnet(cfg: ModelConfig) -> str:
    return f"ResNet-{cfg.depth}{'-IBN-a' if cfg.ibn else ''}"


def infer_resnet(parts: BackboneParts, where: str = "The weights") -> Optional[Dict[str, Any]]:
    """``{"depth", "ibn"}`` of ResNet parts (None if the stem has no ResNet keys); an unsupported depth is an error."""
    stem, layer3, layer4 = parts
    if "conv1.weight" not in stem or "layer1.0.conv1.weight" not in stem:
        return None
    blocks = (indexed_count(stem, "layer1."), indexed_count(stem, "layer2."), indexed_count(layer3, ""),
              indexed_count(layer4, ""))
    kind = "bottleneck" if "layer1.0.conv3.weight" in stem else "basic"
    for depth, layout in RESNET_STAGES.items():
        if layout == (kind, blocks):
            return {"depth": depth, "ibn": "layer1.0.bn1.IN.weight" in stem}
    raise MdprError(f"{where} holds a ResNet with {kind} blocks {list(blocks)} per stage, which is none of the "
                    f"supported depths {', '.join(map(str, RESNET_STAGES))}.")


register_backbone_family(
    "resnet",
    build_resnet,
    file_prefixes=("", "layer3.", "layer4."),
    config_keys=("depth", "ibn"),
    infer=infer_resnet,
    describe=describe_resnet,
    validate=validate_resnet,
)
