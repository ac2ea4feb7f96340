"""DAAD's speed term read over one object's window instead of its fastest cells anywhere.

Written down before the test set was scored (benchmarks/README.md, DAAD section, "Tried on DAAD
block 16, 2026-11-24"): AnoMem v9's change (`anomem_object_speed.py`) applied to DAAD, a
diagnostic for a later change. DAAD's speed term is the mean Lucas-Kanade speed of its
`speed_topk` fastest map cells anywhere in the frame. The variant, `object window`, is the largest
mean speed over one window of cells the size of a typical moving object. The window is measured on
the training frames as AnoMem training measures it (`model.anomem.train.moving_region_sizes`, in
map cells). The speed statistics are fitted on those frames. The score (reconstruction + latent +
speed, the checkpoint's weights) is calibrated on the held-out clean training clips.

    python benchmarks/daad_object_speed.py runs/ped2_daad/block-16.safetensors \\
        runs/ped2_daad/block-16-seed-1.safetensors runs/ped2_daad/block-16-seed-2.safetensors \\
        --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from anomem_object_speed import METRICS, run, spearman
from tqdm import tqdm

from model.anomaly_map import topk_mean
from model.anomem.train import MOVING_SPEED, moving_region_sizes
from model.calibration import calibrate
from model.daad.model import DAAD
from model.data import Clip, load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import frame_aurocs
from model.pipeline import load_model, split_holdout

VARIANTS = ("top-k cells (as trained)", "object window")


@torch.no_grad()
def clip_terms(model: DAAD, clip: Clip) -> dict[str, np.ndarray]:
    """Per frame: the score without its speed term, the speed cells and the speed map's moving area."""
    inputs = with_motion(clip.frames, model.spec)
    base, cells, area, sizes = [], [], [], []
    for start in range(0, len(inputs), 32):
        frames = torch.from_numpy(inputs[start : start + 32])
        terms, _, _ = model.terms(frames)
        score = terms["reconstruction"]
        if "latent" in terms:
            score = score + model.cfg.latent_weight * terms["latent"]
        speed_map = model.speed_map(frames)
        base.append(score.numpy())
        cells.append(model.speed_cells(speed_map))
        area.append((speed_map[:, 0] > MOVING_SPEED).float().mean(dim=(1, 2)).numpy())
        sizes.append(moving_region_sizes(speed_map[:, 0].numpy()))
    return {
        "base": np.concatenate(base),
        "cells": torch.cat(cells).numpy(),
        "area": np.concatenate(area),
        "sizes": np.concatenate(sizes),
    }


def speed_terms(model: DAAD, cells: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """[T, 2] raw speed terms: the checkpoint's (top-k cells) and the object window's."""
    t = torch.from_numpy(cells)
    topk = topk_mean(t, model.cfg.speed_topk)
    windowed = F.avg_pool2d(t, window, stride=1).flatten(1).amax(dim=1)
    return torch.stack([topk, windowed], dim=1).numpy()


def analyse(checkpoint: str, data: str) -> dict[str, Any]:
    model, meta = load_model(checkpoint)
    cfg = meta.config
    if not isinstance(model, DAAD) or not model.has_speed_term:
        raise SystemExit(f"daad_object_speed: {checkpoint} is not a DAAD checkpoint with a speed term")
    train, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    fit = [clip_terms(model, c) for c in tqdm(train, desc="training frames")]
    sizes = np.concatenate([f["sizes"] for f in fit])
    stride = model.cfg.map_stride
    median = np.median(sizes, axis=0)
    grid = fit[0]["cells"].shape[-2:]
    window = (
        min(grid[0], max(1, round(float(median[0]) / stride))),
        min(grid[1], max(1, round(float(median[1]) / stride))),
    )
    tqdm.write(f"{Path(checkpoint).name}: window {window} cells of {stride} px from {len(sizes)} regions")
    raw = np.concatenate([speed_terms(model, f["cells"], window) for f in fit])
    mean, std = raw.mean(axis=0), raw.std(axis=0, ddof=1)

    def standardized(terms: dict[str, np.ndarray]) -> np.ndarray:
        return (speed_terms(model, terms["cells"], window) - mean) / std

    held = [clip_terms(model, c) for c in holdout]
    area = np.concatenate([h["area"] for h in held])
    crowd = [spearman(np.concatenate([standardized(h)[:, i] for h in held]), area) for i in range(2)]
    clips = load_clips(data, cfg.input, split="test")
    test = [clip_terms(model, c) for c in tqdm(clips, desc="test")]
    rows = []
    for i, name in enumerate(VARIANTS):

        def score(t: dict[str, np.ndarray], i: int = i) -> np.ndarray:
            return t["base"] + model.cfg.speed_weight * standardized(t)[:, i]

        calibration = calibrate(np.concatenate([score(h) for h in held]), cfg.train.false_alarm_rate)
        smoothed = [live_scores(score(t), calibration, cfg.train.smoothing_frames) for t in test]
        result = frame_aurocs([c.labels for c in clips], smoothed)  # type: ignore[arg-type]
        rows.append(
            {"checkpoint": checkpoint, "speed term": name, "crowd_rank_correlation": round(crowd[i], 4)}
            | {k: round(result[k], 4) for k in METRICS}
        )
    blobs = {"regions": len(sizes), "median_height_px": float(median[0]), "median_width_px": float(median[1])}
    return {"window_cells": window, "blobs": blobs, "rows": rows}


if __name__ == "__main__":
    sys.exit(run(__doc__ or "", analyse, "DAAD", "daad_object_speed.py", "a diagnostic"))
