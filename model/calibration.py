"""Score calibration: a threshold at a chosen false-alarm rate, and the map of raw scores to [0, 1].

The threshold is the (1 - rate) quantile of a model of the normal scores' upper tail, not of the
held-out frames themselves: their top 20% above its lower edge, read as exponential excess, with the
tail's scale taken at its 90% upper confidence bound. A few hundred held-out frames hold a handful
above a 1% quantile, so the plain empirical quantile of them is a guess that errs low as often as
high; the bound makes the threshold err on the side of fewer false alarms, by more when the hold-out
is smaller. (docs/evaluation.md, "Operating point", gives the measured false-alarm rates.)
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict

TAIL_FRACTION = 0.2
"""Share of the held-out normal scores that the tail model is fitted on (the largest)."""
TAIL_CONFIDENCE = 0.9
"""Confidence of the upper bound on the tail's scale."""
MIN_TAIL_FRAMES = 5
"""Held-out frames the tail model needs at least."""
MIN_FRAMES = math.ceil(MIN_TAIL_FRAMES / TAIL_FRACTION)
"""Normal frames a calibration needs at least (25)."""
EXTRAPOLATION = 4
"""n held-out frames support false-alarm rates down to 1 / (EXTRAPOLATION * n): the tail model reads
a quantile a few times beyond the held-out frames' largest, not far beyond."""


class CalibrationError(ValueError):
    """Too few normal frames to set a threshold at the asked false-alarm rate; the message says what
    is needed."""


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


def tail_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The (1 - rate) quantile of the tail model of `scores` (see the module's docstring); the
    empirical quantile for rates of TAIL_FRACTION and above."""
    from scipy.stats import chi2  # here: importing scipy.stats takes a while, and few need it

    if false_alarm_rate >= TAIL_FRACTION:
        return float(np.quantile(scores, 1.0 - false_alarm_rate))
    edge = float(np.quantile(scores, 1.0 - TAIL_FRACTION))
    excess = scores[scores > edge] - edge
    n = len(excess)
    mean_excess = float(excess.mean()) if n else 0.0
    # 2 n mean / scale is chi-square with 2n degrees of freedom for exponential excesses.
    upper_scale = 2 * n * mean_excess / float(chi2.ppf(1.0 - TAIL_CONFIDENCE, 2 * n)) if n else 0.0
    share = n / len(scores)
    return edge + upper_scale * math.log(share / false_alarm_rate) if share > false_alarm_rate else edge


def calibrate(normal_scores: np.ndarray, false_alarm_rate: float) -> Calibration:
    """Threshold at `false_alarm_rate` on raw scores of held-out normal frames (`tail_threshold`).

    Raises:
        CalibrationError: fewer than MIN_FRAMES finite scores, or too few for the rate.
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < MIN_FRAMES:
        raise CalibrationError(
            f"calibration needs at least {MIN_FRAMES} held-out normal frames, got {len(scores)}: "
            "record more footage, or hold out a larger share of it (train.holdout_fraction)"
        )
    lowest = 1.0 / (EXTRAPOLATION * len(scores))
    if false_alarm_rate < lowest:
        needed = math.ceil(1.0 / (EXTRAPOLATION * false_alarm_rate))
        raise CalibrationError(
            f"{len(scores)} held-out normal frames support false-alarm rates down to {lowest:.2g}, not "
            f"{false_alarm_rate:g}: ask for {lowest:.2g} or more, or hold out {needed} frames or more "
            "(more footage, or a larger train.holdout_fraction)"
        )
    threshold = tail_threshold(scores, false_alarm_rate)
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
