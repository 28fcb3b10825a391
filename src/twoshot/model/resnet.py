"""ResNet backbones up to layer3, with torchvision's parameter names.

Written here because torchvision cannot be a dependency; parameter names match torchvision
so ImageNet ``resnet50-*.pth`` / ``resnet18-*.pth`` files load unchanged. ``conv_bias``
reproduces STCN's value encoder, whose ResNet-18 gives every convolution a bias.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetTrunk(nn.Module):
    """conv1 -> bn1 -> relu -> maxpool -> layer1 (1/4) -> layer2 (1/8) -> layer3 (1/16).

    block: "basic" or "bottleneck"; layers: blocks per stage, e.g. [3, 4, 6] for ResNet-50;
    width: stem channels (64 in torchvision); in_channels: 3 plus any extra mask channels;
    output_stride: 16 (torchvision), or 8 to keep layer3 at 1/8 (its first block unstrided;
    the parameters keep their names and shapes).
    """

    def __init__(
        self,
        block: str,
        layers: list[int],
        width: int = 64,
        in_channels: int = 3,
        conv_bias: bool = False,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; choose one of {sorted(BLOCKS)}")
        if len(layers) != 3:
            raise ValueError(f"layers must give 3 stages (layer1..layer3), got {layers}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        block_type = BLOCKS[block]
        self.conv_bias = conv_bias
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block_type, width, layers[0], 1)
        self.layer2 = self._make_layer(block_type, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block_type, width * 4, layers[2], output_stride // 8)
        self.channels = (
            width * block_type.expansion,
            width * 2 * block_type.expansion,
            width * 4 * block_type.expansion,
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block_type: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_type.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block_type.expansion, 1, stride, bias=self.conv_bias),
                nn.BatchNorm2d(planes * block_type.expansion),
            )
        stage = [block_type(self.inplanes, planes, stride, downsample, self.conv_bias)]
        self.inplanes = planes * block_type.expansion
        stage += [block_type(self.inplanes, planes, conv_bias=self.conv_bias) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> relu -> maxpool. x: [B, C_in, H, W] -> [B, width, H/4, W/4]."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))
