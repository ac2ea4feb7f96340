"""Anomaly-map pieces shared by the models: standardization statistics, smoothing, top-k pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalized 2-D Gaussian as a [1, 1, k, k] conv weight (k = 1 when sigma is 0)."""
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def smooth(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve [B, 1, h, w] maps with a `gaussian_kernel`, replicating the border: same size out."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(maps, (pad, pad, pad, pad), mode="replicate"), kernel)


def topk_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values of each map: [B, 1, h, w] -> [B]."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def position_stats(maps: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and std [1, 1, h, w] of normal maps [N, 1, h, w].

    Each position's variance is shrunk towards the pooled variance (weight `shrinkage`): a spot that
    normal footage rarely shows in motion would otherwise turn an ordinary passer-by into a huge
    standardized value.
    """
    mean = maps.mean(dim=0, keepdim=True)
    pooled_var = (maps - mean).var()
    std = ((1 - shrinkage) * maps.var(dim=0, keepdim=True) + shrinkage * pooled_var).sqrt()
    return mean, std.clamp(min=1e-6)
