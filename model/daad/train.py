"""DAAD training: the autoencoder and its memories against a discriminator, then normal statistics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.anomaly_map import position_stats, topk_mean
from model.augment import epoch_order, epoch_steps
from model.config import TrainConfig
from model.daad import losses
from model.daad.model import DAAD


@dataclass
class TrainState:
    """What a resumable training run records after every epoch."""

    epochs_done: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)  # mean of every loss term per epoch
    seconds: float = 0.0


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def trains_discriminator(model: DAAD, cfg: TrainConfig) -> bool:
    """The discriminator is trained when the autoencoder's losses or the score use it."""
    return cfg.daad.w_adversarial > 0 or cfg.daad.w_feature_matching > 0 or model.cfg.latent_weight > 0


@torch.no_grad()
def initialize_memories(
    model: DAAD, inputs: np.ndarray, generator: torch.Generator, samples: int = 64
) -> None:
    """Seed every memory with blocks of real normal features (faster than random items)."""
    pick = np.sort(torch.randperm(len(inputs), generator=generator)[:samples].numpy())
    model.train()  # batch statistics: the features the memories will see while training
    features = model.encode(model.target(torch.from_numpy(inputs[pick]).to(_device(model))))
    for key, memory in model.memories.items():
        memory.initialize_slots(features[int(key) - 1], generator)  # type: ignore[operator]


def _step(
    model: DAAD,
    frames: torch.Tensor,
    cfg: TrainConfig,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
) -> dict[str, float]:
    rec = model.reconstruct(model.target(frames))
    parts: dict[str, torch.Tensor] = {}
    if opt_d is not None:
        _, real_logits = model.discriminator(rec.target)
        _, fake_logits = model.discriminator(rec.output.detach())
        loss_d = losses.discriminator_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        parts["discriminator"] = loss_d.detach()
    terms = {
        "reconstruction": model.pixel_error(rec).mean(),
        "entropy": cfg.daad.w_entropy * losses.addressing_entropy(rec.weights),
    }
    if cfg.daad.w_adversarial > 0 or cfg.daad.w_feature_matching > 0:
        with torch.no_grad():
            real_features = model.discriminator.features(rec.target)
        fake_features, fake_logits = model.discriminator(rec.output)
        terms["adversarial"] = cfg.daad.w_adversarial * losses.generator_adversarial(fake_logits)
        terms["feature_matching"] = cfg.daad.w_feature_matching * losses.feature_matching(
            real_features, fake_features
        )
    total = torch.stack(list(terms.values())).sum()
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()
    parts.update({k: v.detach() for k, v in terms.items()})
    return {k: float(v) for k, v in parts.items()}


def train_daad(
    model: DAAD,
    inputs: np.ndarray,
    cfg: TrainConfig,
    state: TrainState,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train the autoencoder (reconstruction + memory entropy + adversarial + feature matching).

    Args:
        model: the network.
        inputs: uint8 [N, C, H, W] normal model inputs.
        cfg: training settings (`cfg.daad` holds the loss weights).
        state: progress so far (a resumed run starts after `state.epochs_done`).
        on_epoch: called after each epoch, e.g. to write a resumable checkpoint.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    if state.epochs_done == 0:
        initialize_memories(model, inputs, generator)
    g_params = [p for name, p in model.named_parameters() if not name.startswith("discriminator.")]
    opt_g = torch.optim.AdamW(g_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_d = None
    if trains_discriminator(model, cfg):
        # beta1 = 0.5: the usual GAN setting, the target of the discriminator moves every step.
        opt_d = torch.optim.Adam(
            model.discriminator.parameters(), lr=cfg.daad.discriminator_lr, betas=(0.5, 0.999)
        )
    steps = epoch_steps(len(inputs), cfg.frames_per_epoch, cfg.batch_size)
    total_steps, done_steps = cfg.epochs * steps, state.epochs_done * steps
    # Cosine decay over the whole run; a resumed run picks up the schedule where it stopped.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt_g, lambda i: 0.5 * (1 + math.cos(math.pi * min(i + done_steps, total_steps) / total_steps))
    )
    device = _device(model)
    for epoch in range(state.epochs_done, cfg.epochs):
        epoch_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = epoch_order(len(inputs), steps * cfg.batch_size, epoch_gen).numpy()
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for step in bar:
            idx = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            parts = _step(model, torch.from_numpy(inputs[idx]).to(device), cfg, opt_g, opt_d)
            schedule.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        means = {k: v / steps for k, v in sums.items()}
        state.epochs_done = epoch + 1
        state.losses.append(means)
        state.seconds += time.perf_counter() - started
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.5f}" for k, v in means.items()))
        if on_epoch is not None:
            on_epoch(state)
    return state


@torch.no_grad()
def fit_normal_stats(model: DAAD, inputs: np.ndarray, batch_size: int = 64) -> None:
    """Fit the score's normalization on normal inputs.

    Mean and std of the error cells (per position, shrunk towards the pooled variance, or one for
    all cells) and, with `latent_topk`, of the discriminator-latent cells per position;
    then the mean and std over frames of the pooled reconstruction score, of the latent distance and,
    when the score has one, of the speed term.
    """
    model.eval()
    device = _device(model)
    per_cell = model.cfg.latent_topk is not None
    cells, latents, speeds = [], [], []
    for start in tqdm(range(0, len(inputs), batch_size), desc="normal statistics", unit="batch", leave=False):
        frames = torch.from_numpy(inputs[start : start + batch_size]).to(device)
        speed_map = model.speed_map(frames) if model.has_speed_term else None
        rec = model.reconstruct(model.target(frames, speed_map))
        if speed_map is not None:
            speeds.append(model.speed(speed_map).cpu())
        cells.append(model.error_cells(rec).cpu())
        latents.append((model.latent_cells(rec) if per_cell else model.latent_distance(rec)).cpu())
    all_cells, latent = torch.cat(cells), torch.cat(latents)
    if model.cfg.per_position_stats:
        mean, std = position_stats(all_cells, model.cfg.std_shrinkage)
    else:
        mean, std = all_cells.mean().expand_as(model.err_mean), all_cells.std().expand_as(model.err_std)
    model.err_mean.copy_(mean)
    model.err_std.copy_(std.clamp(min=1e-6))
    if per_cell:
        lat_mean, lat_std = position_stats(latent, model.cfg.std_shrinkage)
        model.lat_mean.copy_(lat_mean)
        model.lat_std.copy_(lat_std)
        latent = model.latent_topk_of(latent.to(device)).cpu()
    pooled = topk_mean(model.standardized(all_cells.to(device)), model.cfg.topk).cpu()
    stats = [pooled.mean(), pooled.std(), latent.mean(), latent.std()]
    model.score_stats.copy_(torch.stack(stats))
    model.score_stats[1::2].clamp_(min=1e-6)
    if speeds:
        speed = torch.cat(speeds)
        model.speed_stats.copy_(torch.stack([speed.mean(), speed.std().clamp(min=1e-6)]))
