"""Stage-2 detector over stacked deviation maps: Deep-SVDD (one-class) or a binary classifier."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class DeviationDetector(nn.Module):
    """Small CNN over [B, L, h, w] standardized deviation maps.

    `svdd`: bias-free embedding whose squared distance to a fixed center is the score (Deep SVDD;
    no biases so the trivial constant solution is out of reach). `classifier`: a logit, trained with
    labelled anomalies (the unbalanced setting).
    """

    center: torch.Tensor

    def __init__(
        self, in_maps: int, width: int = 32, dim: int = 32, head: Literal["svdd", "classifier"] = "svdd"
    ) -> None:
        super().__init__()
        self.head_kind = head
        self.body = nn.Sequential(
            nn.Conv2d(in_maps, width, 3, padding=1, bias=False),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.1),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.1),
        )
        self.embed = nn.Linear(4 * width, dim, bias=False)
        self.classifier = nn.Linear(dim, 1)
        self.register_buffer("center", torch.zeros(dim))

    def embedding(self, maps: torch.Tensor) -> torch.Tensor:
        h = self.body(maps)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.embed(pooled)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw detector score [B]: higher is more anomalous."""
        z = self.embedding(maps)
        if self.head_kind == "classifier":
            return self.classifier(torch.relu(z)).squeeze(1)
        return (z - self.center).pow(2).sum(dim=1)
