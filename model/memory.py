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


def sample_rows(rows: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n rows of [M, D] drawn without replacement (repeated when M < n): seeds for memory slots."""
    pick = torch.randperm(rows.shape[0], generator=generator)[:n]
    if len(pick) < n:
        pick = pick.repeat(n // len(pick) + 1)[:n]
    return rows[pick.to(rows.device)]


def spread_rows(rows: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n rows of [M, D] by k-means++ seeding in cosine geometry (Arthur & Vassilvitskii, 2007).

    Each next row is drawn with probability proportional to its squared distance from the nearest
    row already drawn, so rare normal content (a walker among background cells) gets slots too,
    where uniform draws spend nearly all of them on the background that covers most of a frame.
    Falls back to `sample_rows` when there are no more rows than slots.
    """
    if rows.shape[0] <= n:
        return sample_rows(rows, n, generator)
    unit = F.normalize(rows.float(), dim=-1)
    first = int(torch.randint(rows.shape[0], (1,), generator=generator))
    picks = [first]
    nearest = (unit - unit[first]).pow(2).sum(dim=-1)
    for _ in range(n - 1):
        weights = nearest.clamp(min=0).cpu()
        if float(weights.sum()) <= 0:  # every row coincides with a pick: draw the rest uniformly
            weights = torch.ones_like(weights)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        picks.append(nxt)
        nearest = torch.minimum(nearest, (unit - unit[nxt]).pow(2).sum(dim=-1))
    return rows[torch.tensor(picks, device=rows.device)]


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
    def initialize_slots(
        self, features: torch.Tensor, generator: torch.Generator | None = None, spread: bool = False
    ) -> None:
        """Set the slots to queries of positions of `features` ([B, C, H, W]): drawn uniformly, or
        with `spread` by k-means++ seeding (`spread_rows`)."""
        q = self.query(features).flatten(2).transpose(1, 2).reshape(-1, self.slots.shape[1])
        pick = spread_rows if spread else sample_rows
        self.slots.copy_(pick(q, self.slots.shape[0], generator))


def hard_shrink(weights: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """MemAE's hard shrinkage of addressing weights, renormalized to sum to 1.

    w' = relu(w - t) * w / (|w - t| + eps): weights under the threshold drop to 0, the others keep
    (almost) their value with a gradient, so an item is read from a few memory slots only.

    Args:
        weights: [..., N] addressing weights summing to 1.
        threshold: t, typically 1/N to 3/N.

    Returns:
        [..., N] sparse weights summing to 1 (all 0 in the rare case that none reaches t).
    """
    if threshold <= 0:
        return weights
    shifted = weights - threshold
    shrunk = F.relu(shifted) * weights / (shifted.abs() + eps)
    return shrunk / shrunk.sum(dim=-1, keepdim=True).clamp(min=eps)


def divide_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Divide a map into non-overlapping block x block blocks: [B, C, H, W] -> [B, H/b * W/b, C*b*b].

    Reshape and permute only (no F.unfold), so the graph exports to ONNX with a dynamic batch.
    """
    _, c, h, w = x.shape
    blocks = x.reshape(-1, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(-1, (h // block) * (w // block), c * block * block)


def assemble_blocks(blocks: torch.Tensor, channels: int, height: int, width: int, block: int) -> torch.Tensor:
    """Inverse of `divide_blocks`: [B, H/b * W/b, C*b*b] -> [B, C, H, W]."""
    x = blocks.reshape(-1, height // block, width // block, channels, block, block).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, channels, height, width)


class BlockMemory(nn.Module):
    """Block-wise memory (DAAD): every block of a feature map is rebuilt from memorized normal blocks.

    The map is divided into b x b blocks; each block addresses N memory items by cosine softmax with
    hard shrinkage, and its read-out (the weighted sum of items) takes its place in the assembled map.
    """

    def __init__(self, channels: int, block: int, slots: int, beta: float, shrink: float) -> None:
        super().__init__()
        self.channels = channels
        self.block = block
        self.beta = beta
        self.threshold = shrink / slots
        dim = channels * block * block
        self.slots = nn.Parameter(torch.randn(slots, dim) / dim**0.5)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild a map [B, C, H, W] (H, W multiples of the block) from memory.

        Returns:
            The assembled read-out [B, C, H, W] and the addressing weights [B, blocks, N].
        """
        _, c, h, w = features.shape
        queries = divide_blocks(features, self.block)
        weights = hard_shrink(cosine_addressing(queries, self.slots, self.beta), self.threshold)
        return assemble_blocks(weights @ self.slots, c, h, w, self.block), weights

    @torch.no_grad()
    def initialize_slots(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the items to randomly chosen blocks of `features` ([B, C, H, W])."""
        blocks = divide_blocks(features, self.block).reshape(-1, self.slots.shape[1])
        self.slots.copy_(sample_rows(blocks, self.slots.shape[0], generator))
