"""Batched image augmentations for contrastive views (no torchvision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_views(
    x: torch.Tensor, frame_channels: int, crop_scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """One augmented view of a batch [B, C, H, W] in [0, 1]: resized crop, flip, brightness/contrast.

    The same geometry and photometry apply to every channel of a sample, so a frame and its
    predecessor stay aligned and the motion between them is preserved.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(*crop_scale, generator=generator)
    side = area.sqrt()
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    tx = (1 - side) * (torch.rand(b, generator=generator) * 2 - 1)
    ty = (1 - side) * (torch.rand(b, generator=generator) * 2 - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=generator).to(x.device)
    bias = torch.empty(b, 1, 1, 1).uniform_(-0.1, 0.1, generator=generator).to(x.device)
    mean = out[:, :frame_channels].mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * gain + mean + bias).clamp(0, 1)


def epoch_steps(frames: int, frames_per_epoch: int | None, batch_size: int) -> int:
    """Optimizer steps of one training epoch: `frames_per_epoch` samples whatever the footage's length
    (None: one pass over its `frames`). A camera's first minutes get as many steps as an hour of
    footage; short footage is passed over several times, each time in a new order and with new
    augmentations."""
    return max(1, (frames_per_epoch or frames) // batch_size)


def epoch_order(frames: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """`samples` frame indices for one epoch: passes over all `frames`, each in its own random order,
    cut at `samples` (one permutation, as before, when the footage holds that many frames)."""
    passes = -(-samples // frames)
    return torch.cat([torch.randperm(frames, generator=generator) for _ in range(passes)])[:samples]
