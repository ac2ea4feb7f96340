"""Memory modules shared by the models: content-addressed slots read by attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_addressing(queries: torch.Tensor, slots: torch.Tensor, beta: float) -> torch.Tensor:
    """Attention of each query over the slots: softmax(beta * cos(q, m)).

    Args:
        queries: [..., D].
        slots: [N, D].
        beta: inverse temperature.

    Returns:
        [..., N] addressing weights summing to 1.
    """
    logits = beta * F.normalize(queries, dim=-1) @ F.normalize(slots, dim=-1).t()
    return logits.softmax(dim=-1)


class HopfieldMemory(nn.Module):
    """One-step modern Hopfield read at every spatial position of a feature map.

    q = W_q f, a = softmax(beta * cos(q, M)), r = a M, read-out R = W_o r (back to C channels).
    The read-out is the memorized normal prototype of the observed feature.
    """

    def __init__(self, channels: int, slots: int, dim: int, beta: float) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, dim, kernel_size=1, bias=False)
        self.slots = nn.Parameter(torch.randn(slots, dim) / dim**0.5)
        self.out = nn.Conv2d(dim, channels, kernel_size=1, bias=False)
        self.beta = beta
        # Start with W_o = pinv(W_q) so a slot equal to a query reads back the feature it came from.
        nn.init.orthogonal_(self.query.weight)
        with torch.no_grad():
            w_q = self.query.weight.view(dim, channels)
            self.out.weight.copy_(torch.linalg.pinv(w_q).view(channels, dim, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Read the memory at each position: [B, C, H, W] -> prototype map [B, C, H, W]."""
        b, _, h, w = features.shape
        q = self.query(features).flatten(2).transpose(1, 2)  # [B, HW, D]
        weights = cosine_addressing(q, self.slots, self.beta)
        read = (weights @ self.slots).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(read)

    @torch.no_grad()
    def initialize_slots(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the slots to queries of randomly chosen positions of `features` ([B, C, H, W])."""
        q = self.query(features).flatten(2).transpose(1, 2).reshape(-1, self.slots.shape[1])
        pick = torch.randperm(q.shape[0], generator=generator)[: self.slots.shape[0]]
        if len(pick) < self.slots.shape[0]:
            pick = pick.repeat(self.slots.shape[0] // len(pick) + 1)[: self.slots.shape[0]]
        self.slots.copy_(q[pick])
