"""Common interface of the multi-scale feature backbones."""

from __future__ import annotations

from typing import Self

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class Backbone(nn.Module):
    """Base class of a CNN that returns feature maps at several strides.

    Subclasses set ``out_channels`` and ``strides`` (one entry per returned map, in
    the order ``forward`` returns them) and implement ``forward``. Inputs are float
    images in ``[0, 1]``; each backbone applies its own input normalization.
    """

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False

    @property
    def frozen(self) -> bool:
        """Whether ``freeze`` has been called."""
        return self._frozen

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Computes the feature maps.

        Args:
            x: Images in ``[0, 1]``, shape ``[B, in_chans, H, W]``.

        Returns:
            One map per entry of ``strides``, shape ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]``.
        """
        raise NotImplementedError

    def freeze(self) -> None:
        """Makes all parameters non-trainable and pins BatchNorm layers to eval mode."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        """Sets train/eval mode; BatchNorm layers of a frozen backbone stay in eval mode."""
        super().train(mode)
        if self._frozen:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
