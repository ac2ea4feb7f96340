"""Multi-scale CNN backbones returning feature maps at three strides."""

from __future__ import annotations

from model.backbones.base import Backbone
from model.backbones.efficientnet_lite import efficientnet_lite0
from model.backbones.resnet import STEMS, resnet18

BACKBONES = ("efficientnet_lite0", "resnet18")

__all__ = ["BACKBONES", "Backbone", "build_backbone"]


def build_backbone(
    name: str, in_chans: int = 1, pretrained: bool = False, stem: str = "imagenet"
) -> Backbone:
    """Builds a backbone by name.

    Args:
        name: ``"efficientnet_lite0"`` or ``"resnet18"``.
        in_chans: Number of input image channels.
        pretrained: Load ImageNet weights (EfficientNet-Lite0 only, ``in_chans`` 1 or 3).
        stem: ResNet stem, ``"imagenet"`` or ``"cifar"``; EfficientNet only has ``"imagenet"``.

    Returns:
        The backbone; inputs are images in ``[0, 1]``.

    Raises:
        ValueError: On an unknown name or stem, or an unsupported option combination.
    """
    if name == "efficientnet_lite0":
        if stem != "imagenet":
            raise ValueError(f"efficientnet_lite0 has no stem option {stem!r}; only 'imagenet'")
        return efficientnet_lite0(in_chans=in_chans, pretrained=pretrained)
    if name == "resnet18":
        if pretrained:
            raise ValueError("resnet18 has no pretrained weights; it is trained from scratch")
        if stem not in STEMS:
            raise ValueError(f"unknown resnet18 stem {stem!r}; valid: {', '.join(STEMS)}")
        return resnet18(in_chans=in_chans, stem=stem)
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
