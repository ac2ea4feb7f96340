"""ResNet-18 feature extractor trained from scratch (torchvision-style module names)."""

from __future__ import annotations

import torch
from torch import nn

from model.backbones.base import Backbone

RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_DEPTHS = (2, 2, 2, 2)
STEMS = ("imagenet", "cifar")
INPUT_MEAN = 0.5
INPUT_STD = 0.25


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv and of the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


def _make_layer(in_channels: int, out_channels: int, depth: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNet18(Backbone):
    """ResNet-18 returning the outputs of layer2, layer3 and layer4.

    Args:
        in_chans: Number of input image channels.
        stem: ``"imagenet"`` (7x7 stride-2 conv + max-pool; maps at strides 8/16/32) or
            ``"cifar"`` (3x3 stride-1 conv, no pool; maps at strides 2/4/8).
    """

    def __init__(self, in_chans: int = 1, stem: str = "imagenet") -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, RESNET18_WIDTHS[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stem_stride = 4
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, RESNET18_WIDTHS[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            stem_stride = 1
        else:
            raise ValueError(f"unknown ResNet stem {stem!r}; valid: {', '.join(STEMS)}")
        self.bn1 = nn.BatchNorm2d(RESNET18_WIDTHS[0])
        self.act = nn.ReLU(inplace=True)

        w1, w2, w3, w4 = RESNET18_WIDTHS
        d1, d2, d3, d4 = RESNET18_DEPTHS
        self.layer1 = _make_layer(w1, w1, d1, stride=1)
        self.layer2 = _make_layer(w1, w2, d2, stride=2)
        self.layer3 = _make_layer(w2, w3, d3, stride=2)
        self.layer4 = _make_layer(w3, w4, d4, stride=2)
        self.out_channels = (w2, w3, w4)
        self.strides = (stem_stride * 2, stem_stride * 4, stem_stride * 8)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the maps at ``strides``; ``x`` is in ``[0, 1]`` and standardized here."""
        x = (x - INPUT_MEAN) / INPUT_STD
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def resnet18(in_chans: int = 1, stem: str = "imagenet") -> ResNet18:
    """Builds a randomly initialized ResNet-18 backbone (see ``ResNet18``)."""
    return ResNet18(in_chans=in_chans, stem=stem)
