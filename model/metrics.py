"""Evaluation metrics of the benchmark protocol (MODELS.md): AUROCs, causal smoothing, normalization."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), exact, O(n log n), fine for 10^8 values.

    Raises:
        ValueError: when labels hold a single class.
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both normal and anomalous samples")
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # Average rank of each run of tied scores (1-based ranks).
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    run_rank = (starts + ends + 1) / 2.0
    pos_per_run = np.add.reduceat(y_sorted.astype(np.int64), starts)
    rank_sum = float((run_rank * pos_per_run).sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def causal_smooth(scores: np.ndarray, frames: int) -> np.ndarray:
    """Mean over the current and up to `frames - 1` previous scores: uses no future frame."""
    s = np.asarray(scores, dtype=np.float64)
    if frames <= 1 or s.size == 0:
        return s.copy()
    cumulative = np.concatenate([[0.0], np.cumsum(s)])
    idx = np.arange(1, s.size + 1)
    lo = np.maximum(0, idx - frames)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Per-video min-max normalization (the published protocol; needs the whole video, so not causal)."""
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else np.zeros_like(s)


def frame_aurocs(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> dict[str, float]:
    """The three frame-level AUROCs over per-clip arrays of labels and (already smoothed) scores.

    Returns:
        auroc_causal_micro: pooled over all frames, scores as given.
        auroc_paper_micro: pooled after per-video min-max normalization.
        auroc_macro: mean of per-clip AUROCs over clips that hold both classes.
    """
    y = np.concatenate(labels)
    per_clip = [auroc(lab, sc) for lab, sc in zip(labels, scores, strict=True) if 0 < lab.sum() < lab.size]
    return {
        "auroc_causal_micro": auroc(y, np.concatenate(scores)),
        "auroc_paper_micro": auroc(y, np.concatenate([minmax(s) for s in scores])),
        "auroc_macro": float(np.mean(per_clip)) if per_clip else float("nan"),
    }
