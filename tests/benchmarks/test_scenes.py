"""The two-scene protocol's pieces: Ped1-dev's training runs and the trivial baselines."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scenes import first_frames, frame_difference, normal_runs

from model.data import Clip


def test_ped1_training_runs_are_the_long_normal_stretches_of_a_clip() -> None:
    labels = np.array([0] * 12 + [1] * 5 + [0] * 9 + [1] * 2 + [0] * 10)
    frames = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    runs = normal_runs(Clip(name="01", frames=frames, labels=labels), min_frames=10)
    assert [r.name for r in runs] == ["01[0:12]", "01[28:38]"]  # the 9-frame run is too short
    assert runs[1].frames[:, 0, 0, 0].tolist() == list(range(28, 38))


def test_the_baselines_read_the_frame_difference_and_its_largest_cell() -> None:
    frames = np.zeros((3, 1, 16, 16), np.uint8)
    frames[1, 0, :8, :8] = 80  # one 8x8 cell changes by 80 grey levels, then changes back
    scores = frame_difference(Clip(name="c", frames=frames))
    np.testing.assert_allclose(scores["frame-diff-mean"], [0, 20, 20])  # a quarter of the frame
    np.testing.assert_allclose(scores["frame-diff-max-cell"], [0, 80, 80])


def test_the_footage_curve_takes_the_first_frames_in_order() -> None:
    clips = [
        Clip(name=n, frames=np.full((k, 1, 1, 1), i, np.uint8))
        for i, (n, k) in enumerate([("a", 30), ("b", 50)])
    ]
    first = first_frames(clips, 60)
    assert [(c.name, len(c.frames)) for c in first] == [("a", 30), ("b[:30]", 30)]
    assert [len(c.frames) for c in first_frames(clips, 80)] == [30, 50]
    with pytest.raises(SystemExit, match="only 80 frames"):
        first_frames(clips, 81)
