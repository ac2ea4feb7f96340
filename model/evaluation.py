"""The benchmark protocol (MODELS.md) applied to a model and labelled clips."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.calibration import Calibration
from model.config import ExperimentConfig
from model.data import Clip, DataError, load_clips, with_motion
from model.metrics import auroc, causal_smooth, frame_aurocs
from model.pipeline import score_inputs
from model.runtime.base import Runtime

PIXEL_DOWNSCALE = 2  # pixel AUROC on a half-resolution grid: same ranking, a quarter of the memory


def _mask_stack(clip: Clip, size: tuple[int, int]) -> np.ndarray:
    assert clip.mask_paths is not None
    masks = []
    for path in clip.mask_paths:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DataError(f"cannot read mask {path}")
        masks.append(cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 127)
    return np.stack(masks)


def _maps_to(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in maps])


def _score(
    scorer: nn.Module | Runtime, inputs: np.ndarray, batch_size: int, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scorer, nn.Module):
        return score_inputs(scorer, inputs, batch_size=batch_size, desc=desc)
    scores, maps = [], []
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False):
        s, m = scorer.infer(inputs[start : start + batch_size])
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def live_scores(raw: np.ndarray, calibration: Calibration | None, smoothing_frames: int) -> np.ndarray:
    """The smoothed scores the live monitor thresholds, for one camera's raw scores in frame order.

    The monitor maps each raw score to [0, 1] with the model's calibration (a logistic, threshold at
    0.5) and then takes the causal mean of the latest `smoothing_frames` of them (monitor/camera.py,
    default settings: no frame suppressed for its map's regions). So one extreme frame moves the mean
    by at most 1 / smoothing_frames; a mean of raw scores would stay high for the whole window after
    an event has left.
    """
    scores = raw if calibration is None else calibration.normalize(raw)
    return causal_smooth(scores, smoothing_frames)


def operating_point(
    labels: list[np.ndarray],
    raw: list[np.ndarray],
    smoothed: list[np.ndarray],
    calibration: Calibration,
) -> dict[str, float]:
    """What the calibrated threshold does on labelled frames: the share of normal frames flagged (the
    false-alarm rate an operator sees, to compare with the rate asked for) and of anomalous frames
    flagged (hit rate), for the raw score against the threshold and for the monitor's rule (the
    smoothed calibrated score above 0.5)."""
    y = np.concatenate(labels).astype(bool)
    flagged_raw = np.concatenate(raw) > calibration.threshold
    flagged = np.concatenate(smoothed) > 0.5
    return {
        "requested_false_alarm_rate": calibration.false_alarm_rate,
        "false_alarm_rate_raw": float(flagged_raw[~y].mean()) if (~y).any() else float("nan"),
        "hit_rate_raw": float(flagged_raw[y].mean()) if y.any() else float("nan"),
        "false_alarm_rate_smoothed": float(flagged[~y].mean()) if (~y).any() else float("nan"),
        "hit_rate_smoothed": float(flagged[y].mean()) if y.any() else float("nan"),
    }


def evaluate_clips(
    scorer: nn.Module | Runtime,
    cfg: ExperimentConfig,
    clips: list[Clip],
    smoothing_frames: int,
    *,
    calibration: Calibration | None,
    batch_size: int = 32,
) -> dict[str, float | int | str]:
    """Frame- and pixel-level AUROCs and scoring speed on labelled clips.

    Every frame-level AUROC is taken over the scores the live monitor smooths (`live_scores`); the
    paper protocol then min-max normalizes each video.

    Args:
        scorer: an in-memory model (uint8 frames -> score, map) or an opened runtime.
        calibration: the model's score calibration, which the monitor applies before smoothing;
            None smooths the raw scores (an uncalibrated model, which the monitor refuses to serve).
    """
    labelled = [c for c in clips if c.labels is not None]
    if not labelled:
        raise DataError("evaluation needs labelled clips (a benchmark root with test/ and labels.json)")
    labels, raw_scores, smoothed, pixel_scores, pixel_truth = [], [], [], [], []
    inference_seconds, frames = 0.0, 0
    for clip in tqdm(labelled, desc="evaluating clips", unit="clip"):
        inputs = with_motion(clip.frames, cfg.input)
        started = time.perf_counter()
        raw, maps = _score(scorer, inputs, batch_size, clip.name)
        inference_seconds += time.perf_counter() - started
        frames += len(inputs)
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"clip {clip.name}: the model produced non-finite scores")
        assert clip.labels is not None
        labels.append(clip.labels)
        raw_scores.append(raw)
        smoothed.append(live_scores(raw, calibration, smoothing_frames))
        if clip.mask_paths:
            size = (clip.source_size[0] // PIXEL_DOWNSCALE, clip.source_size[1] // PIXEL_DOWNSCALE)
            pixel_truth.append(_mask_stack(clip, size))
            pixel_scores.append(_maps_to(maps, size))
    result: dict[str, float | int | str] = dict(frame_aurocs(labels, smoothed))
    result["auroc_causal_micro_unsmoothed"] = frame_aurocs(labels, raw_scores)["auroc_causal_micro"]
    result["pixel_auroc"] = (
        auroc(np.concatenate(pixel_truth), np.concatenate(pixel_scores)) if pixel_truth else float("nan")
    )
    if calibration is not None:
        result.update(operating_point(labels, raw_scores, smoothed, calibration))
    result["fps"] = frames / inference_seconds
    result["frames"] = frames
    result["clips"] = len(labelled)
    result["smoothing_frames"] = smoothing_frames
    result["smoothed_scores"] = "raw" if calibration is None else "calibrated"
    result["threads"] = torch.get_num_threads()
    return result


def evaluate_path(
    scorer: nn.Module | Runtime,
    cfg: ExperimentConfig,
    data: str | Path,
    smoothing_frames: int,
    *,
    calibration: Calibration | None,
    batch_size: int = 32,
) -> dict[str, float | int | str]:
    """Evaluate on a Ped2 root (its test split) or any folder of labelled clips (see `evaluate_clips`)."""
    clips = load_clips(data, cfg.input, split="test")
    return evaluate_clips(
        scorer, cfg, clips, smoothing_frames, calibration=calibration, batch_size=batch_size
    )
