"""AnoMem training: stage 1 (representation + memories), stage 2 (deviation statistics + detector)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.anomaly_map import position_stats
from model.anomem import losses
from model.anomem.model import AnoMem
from model.augment import epoch_order, epoch_steps, random_views
from model.config import TrainConfig

ProgressHook = Callable[[str, int, float], None]  # (stage, epoch, mean loss) after each epoch


@dataclass
class TrainState:
    """What a resumable training run records after every epoch."""

    stage1_epochs_done: int = 0
    stage1_losses: list[float] = field(default_factory=list)
    detector_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _stage1_step(
    model: AnoMem, batch: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    fc = model.spec.frame_channels
    views = [random_views(batch, fc, cfg.crop_scale, generator) * 255.0 for _ in range(2)]
    descs = [model.describe(*model.split_input(v)) for v in views]
    readouts = [[m(v) for m, v in zip(model.memories, d.maps, strict=True)] for d in descs]
    terms: dict[str, torch.Tensor] = {}
    if not model.cfg.freeze_encoder and cfg.w_contrastive > 0:
        z = [model.instance_head(d.last_features.mean(dim=(2, 3))) for d in descs]
        terms["contrastive"] = cfg.w_contrastive * losses.nt_xent(z[0], z[1], cfg.temperature)
    mc: list[torch.Tensor] = []
    fit: list[torch.Tensor] = []
    var: list[torch.Tensor] = []
    for i, head in enumerate(model.heads):
        f0 = head(descs[0].maps[i].mean(dim=(2, 3)))
        r1 = head(readouts[1][i].mean(dim=(2, 3)))
        mc.append(losses.memory_contrastive(f0, r1, cfg.temperature))
        fit.extend(losses.memory_fit(descs[v].maps[i], readouts[v][i]) for v in (0, 1))
        var.append(losses.slot_variance(model.memories[i].slots))
    terms["memory_contrastive"] = cfg.w_memory_contrastive * torch.stack(mc).mean()
    terms["fit"] = cfg.w_fit * torch.stack(fit).mean()
    terms["variance"] = cfg.w_variance * torch.stack(var).mean()
    total = torch.stack(list(terms.values())).sum()
    return total, {k: float(v.detach()) for k, v in terms.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def initialize_memories(
    model: AnoMem, inputs: np.ndarray, generator: torch.Generator, samples: int = 64, spread: bool = False
) -> None:
    """Seed every memory's slots with queries of real normal features (faster than random slots):
    uniformly drawn positions, or with `spread` k-means++ seeding over them."""
    pick = torch.randperm(len(inputs), generator=generator)[:samples].numpy()
    model.eval()
    desc = model.describe(*model.split_input(torch.from_numpy(inputs[np.sort(pick)]).to(_device(model))))
    for memory, v in zip(model.memories, desc.maps, strict=True):
        memory.initialize_slots(v, generator, spread=spread)


def train_stage1(
    model: AnoMem,
    inputs: np.ndarray,
    cfg: TrainConfig,
    state: TrainState,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Stage 1: NT-Xent + memory-contrastive + memory fit + slot variance on augmented normal frames.

    Args:
        model: the network (encoder frozen or not per its config).
        inputs: uint8 [N, C, H, W] normal model inputs.
        cfg: training settings.
        state: progress so far (a resumed run starts after `state.stage1_epochs_done`).
        on_epoch: called after each epoch, e.g. to write a resumable checkpoint.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    if state.stage1_epochs_done == 0:
        initialize_memories(model, inputs, generator, spread=cfg.memory_init == "spread")
    params = [p for p in model.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in encoder_ids], "lr": cfg.lr},
        {"params": [p for p in params if id(p) in encoder_ids], "lr": cfg.encoder_lr or cfg.lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    steps = epoch_steps(len(inputs), cfg.frames_per_epoch, cfg.batch_size)
    total_steps, done_steps = cfg.epochs * steps, state.stage1_epochs_done * steps
    # Cosine decay over the whole run; a resumed run picks up the schedule where it stopped.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i + done_steps, total_steps) / total_steps))
    )
    for epoch in range(state.stage1_epochs_done, cfg.epochs):
        epoch_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = epoch_order(len(inputs), steps * cfg.batch_size, epoch_gen).numpy()
        model.train()
        started, total = time.perf_counter(), 0.0
        bar = tqdm(range(steps), desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for step in bar:
            idx = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            batch = torch.from_numpy(inputs[idx]).to(_device(model)).float() / 255.0
            loss, parts = _stage1_step(model, batch, cfg, epoch_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        state.stage1_epochs_done = epoch + 1
        state.stage1_losses.append(total / steps)
        state.seconds += time.perf_counter() - started
        tqdm.write(f"stage 1 epoch {epoch + 1}/{cfg.epochs}: loss {total / steps:.4f}")
        if on_epoch is not None:
            on_epoch(state)
    return state


@torch.no_grad()
def deviation_maps(
    model: AnoMem, inputs: np.ndarray, batch_size: int = 64, desc: str = "deviations"
) -> list[torch.Tensor]:
    """Raw deviation maps of every input, per used scale: list of [N, 1, h_l, w_l]."""
    model.eval()
    chunks: list[list[torch.Tensor]] = []
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False):
        x = torch.from_numpy(inputs[start : start + batch_size]).to(_device(model))
        chunks.append([d.cpu() for d in model.raw_deviations(model.describe(*model.split_input(x)))])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(model.scales))]


@torch.no_grad()
def fit_deviation_stats(model: AnoMem, deviations: list[torch.Tensor]) -> None:
    """Mean and std of each deviation map over normal frames, per position or per scale.

    Per position, the variance is shrunk towards the scale's pooled variance (weight
    `std_shrinkage`): a spot that training footage rarely shows in motion would otherwise turn an
    ordinary passer-by into a huge standardized deviation.
    """
    for i, d in enumerate(deviations):
        if model.cfg.per_position_stats:
            mean, std = position_stats(d, model.cfg.std_shrinkage)
        else:
            mean = d.mean().expand(1, 1, *d.shape[-2:])
            std = d.std().expand(1, 1, *d.shape[-2:])
        m, s = model.dev_stats(i)
        m.copy_(mean.to(m.device))
        s.copy_(std.clamp(min=1e-6).to(s.device))


MOVING_SPEED = 0.5  # px per frame: a pixel moving for object_window's measurement
MIN_REGION = 16  # pixels: smaller moving regions are noise, not objects


def moving_region_sizes(speed: np.ndarray) -> np.ndarray:
    """Bounding-box (height, width) in pixels of each connected moving region of speed maps [N, H, W]."""
    sizes = []
    for frame in speed:
        count, _, stats, _ = cv2.connectedComponentsWithStats((frame > MOVING_SPEED).astype(np.uint8))
        regions = stats[1:count]
        regions = regions[regions[:, cv2.CC_STAT_AREA] >= MIN_REGION]
        sizes.append(regions[:, [cv2.CC_STAT_HEIGHT, cv2.CC_STAT_WIDTH]])
    return np.concatenate(sizes) if sizes else np.zeros((0, 2), dtype=np.int32)


@torch.no_grad()
def fit_object_window(model: AnoMem, inputs: np.ndarray, batch_size: int = 64) -> tuple[int, int]:
    """Measure `object_window` on normal frames and store it in the model's config.

    The window of the speed term is the size of one moving object: the median bounding box of the
    connected regions that move faster than 0.5 px per frame (at least 16 pixels), in stride-8 cells.
    No labels: walkers in normal footage set it. With no moving region at all the config's square
    fallback (`AnoMem.object_window`) stays.
    """
    model.eval()
    device = _device(model)
    sizes = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="object size", unit="batch", leave=False):
        _, motion = model.split_input(torch.from_numpy(inputs[start : start + batch_size]).to(device))
        assert motion is not None
        sizes.append(moving_region_sizes(motion[:, 1].cpu().numpy()))
    found = np.concatenate(sizes)
    if len(found) == 0:
        tqdm.write("no moving regions in the training frames: the speed term keeps its square window")
        return model.object_window
    height, width = np.median(found, axis=0) / 8
    window = (max(1, round(float(height))), max(1, round(float(width))))
    model.cfg = model.cfg.model_copy(update={"object_window": window})
    tqdm.write(f"speed term window: {window[0]} x {window[1]} cells (median of {len(found)} moving regions)")
    return window


def fit_score(model: AnoMem, inputs: np.ndarray, deviations: list[torch.Tensor]) -> None:
    """What the one-class score fits on normal frames once the deviation statistics are set: the speed
    term's window (when the config leaves it unset) and the term statistics."""
    if model.spec.motion and model.cfg.object_window is None:
        fit_object_window(model, inputs)
    fit_term_stats(model, inputs, deviations)


@torch.no_grad()
def fit_term_stats(
    model: AnoMem, inputs: np.ndarray, deviations: list[torch.Tensor], batch_size: int = 64
) -> None:
    """Mean and std of every one-class score term over normal frames (after `fit_deviation_stats`).

    Standardizing each term puts the scales and the speed on one footing before they are weighted:
    their spreads over normal footage differ several-fold.
    """
    model.eval()
    device = _device(model)
    terms = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="score terms", unit="batch", leave=False):
        _, motion = model.split_input(torch.from_numpy(inputs[start : start + batch_size]).to(device))
        standardized = model.standardized([d[start : start + batch_size].to(device) for d in deviations])
        terms.append(model.score_terms(standardized, motion).cpu())
    stacked = torch.cat(terms)
    stats = torch.stack([stacked.mean(dim=0), stacked.std(dim=0).clamp(min=1e-6)])
    model.term_stats.copy_(stats.to(model.term_stats.device))


@torch.no_grad()
def stacked_maps(model: AnoMem, deviations: list[torch.Tensor]) -> torch.Tensor:
    """Standardized, upsampled deviation maps [N, L, h0, w0] (on the CPU) of raw per-scale deviations."""
    device = _device(model)
    return model.stack_maps(model.standardized([d.to(device) for d in deviations])).cpu()


def train_detector(
    model: AnoMem,
    normal_stacked: torch.Tensor,
    cfg: TrainConfig,
    state: TrainState,
    anomalous_stacked: torch.Tensor | None = None,
) -> None:
    """Stage 2 detector: Deep SVDD on normal maps, or a binary classifier when anomalies are labelled."""
    detector = model.detector
    device = _device(model)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    classifier = detector.head_kind == "classifier"
    if classifier and (anomalous_stacked is None or len(anomalous_stacked) == 0):
        raise ValueError("score 'classifier' needs labelled anomalous frames (--anomalies)")
    detector.train()
    if not classifier:
        with torch.no_grad():
            center = detector.embedding(normal_stacked[:512].to(device)).mean(dim=0)
            # Keep every coordinate away from 0 so the center is not trivially reachable (Ruff et al.).
            eps = 0.1
            center[(center.abs() < eps) & (center < 0)] = -eps
            center[(center.abs() < eps) & (center >= 0)] = eps
            detector.center.copy_(center)
    maps = normal_stacked
    targets = torch.zeros(len(normal_stacked))
    if classifier and anomalous_stacked is not None:
        maps = torch.cat([normal_stacked, anomalous_stacked])
        targets = torch.cat([targets, torch.ones(len(anomalous_stacked))])
    maps, targets = maps.to(device), targets.to(device)
    pos_weight = (targets == 0).sum() / max(1, int((targets == 1).sum()))
    optimizer = torch.optim.Adam(detector.parameters(), lr=cfg.detector_lr, weight_decay=1e-6)
    batch = 64
    for _ in tqdm(range(cfg.detector_epochs), desc="stage 2 detector", unit="epoch", leave=False):
        order = torch.randperm(len(maps), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(maps), batch):
            idx = order[start : start + batch].to(device)
            if classifier:
                logits = detector(maps[idx])
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits, targets[idx], pos_weight=pos_weight
                )
            else:
                loss = losses.svdd_loss(detector.embedding(maps[idx]), detector.center)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        state.detector_losses.append(total / count)
    detector.eval()
