"""ResNet-18/34/50/101/152 with optional IBN-a, laid out exactly as fast-reid builds it.

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

from typing import Dict, List, Tuple, Type, Union

import torch
from torch import nn

from mdpr.errors import MdprError

#: blocks per stage and block type for each supported depth
RESNET_STAGES: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-a): InstanceNorm on the first half of the channels, BatchNorm on the rest."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


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
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # fast-reid's stem pool: no padding, ceil mode (a 384x192 input gives 96x48 after layer1 either way,
        # but the pooled windows differ from torchvision's padding=1 version)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        widths = (64, 128, 256, 512)
        strides = (1, 2, 2, last_stride)
        inplanes = 64
        for index, (planes, count, stride) in enumerate(zip(widths, blocks, strides), start=1):
            # IBN-a only in layer1..layer3
            stage = _make_stage(block, inplanes, planes, count, stride, ibn and index < 4)
            setattr(self, f"layer{index}", stage)
            inplanes = planes * block.expansion
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
