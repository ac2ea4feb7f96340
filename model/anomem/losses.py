"""AnoMem's training losses, as plain functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each row of z1 must pick its own row of z2 (and vice versa) among 2B - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def memory_contrastive(features: torch.Tensor, readouts: torch.Tensor, temperature: float) -> torch.Tensor:
    """The pooled projection of one view's features must identify the other view's memory read-out."""
    return nt_xent(features, readouts, temperature)


def slot_variance(slots: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg-style hinge keeping every dimension of the (unit-normalized) slots spread out.

    The target std is 1/sqrt(D), the spread of unit vectors scattered evenly over the sphere.
    """
    unit = F.normalize(slots, dim=1)
    std = (unit.var(dim=0) + eps).sqrt()
    return F.relu(unit.shape[1] ** -0.5 - std).mean()


def memory_fit(descriptors: torch.Tensor, readouts: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation between descriptors (held fixed) and their memory read-outs."""
    return (descriptors.detach() - readouts).pow(2).sum(dim=1).mean()


def svdd_loss(embeddings: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Deep SVDD one-class objective: mean squared distance to the center."""
    return (embeddings - center).pow(2).sum(dim=1).mean()
