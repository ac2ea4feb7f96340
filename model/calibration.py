"""Score calibration: a threshold at a chosen false-alarm rate, and the map of raw scores to [0, 1]."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict

MIN_FRAMES = 10
"""Normal frames a calibration needs at least."""


class Calibration(BaseModel):
    """Maps raw scores to [0, 1] with the threshold at 0.5 and the median normal frame at 0.25."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    scale: float
    false_alarm_rate: float
    normal_median: float
    frames: int

    def normalize(self, raw: np.ndarray | float) -> np.ndarray:
        """Logistic map of raw scores; monotonic, so rankings and AUROC are unchanged."""
        z = (np.asarray(raw, dtype=np.float64) - self.threshold) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def calibrate(normal_scores: np.ndarray, false_alarm_rate: float) -> Calibration:
    """Threshold at the (1 - false_alarm_rate) quantile of raw scores of held-out normal frames."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < MIN_FRAMES:
        raise ValueError(f"calibration needs at least {MIN_FRAMES} normal frames, got {len(scores)}")
    threshold = float(np.quantile(scores, 1.0 - false_alarm_rate))
    median = float(np.median(scores))
    spread = threshold - median
    if spread <= 0:
        spread = float(scores.std()) or 1.0
    return Calibration(
        threshold=threshold,
        scale=spread / math.log(3.0),
        false_alarm_rate=false_alarm_rate,
        normal_median=median,
        frames=len(scores),
    )
