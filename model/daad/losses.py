"""DAAD's training losses, as plain functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def addressing_entropy(weights: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy of the memory addressing weights (MemAE): low entropy = few items per block."""
    return torch.stack([-(w * (w + eps).log()).sum(dim=-1).mean() for w in weights]).mean()


def generator_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the autoencoder: its reconstructions should be judged real."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the discriminator: frames are real, reconstructions are fake."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def feature_matching(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Per-sample squared distance of the discriminator features of a frame (held fixed) and its rebuild."""
    return (real_features.detach() - fake_features).pow(2).mean()
