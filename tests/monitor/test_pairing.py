"""Motion pairing: which earlier frame a camera's frame is scored with (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.pairing import FIRST, GAP, MotionPairs

MS = 1_000_000  # ns


def _frame(value: int) -> np.ndarray:
    return np.full((1, 4, 6), value, dtype=np.uint8)


def test_consecutive_frames_pair_with_their_predecessor_per_camera() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5)
    assert pairs.pair("a", _frame(1), 0)[1] == FIRST
    assert pairs.pair("b", _frame(10), 50 * MS)[1] == FIRST  # cameras do not share a predecessor
    previous, why = pairs.pair("a", _frame(2), 100 * MS)
    assert why is None and previous[0, 0, 0] == 1
    previous, why = pairs.pair("b", _frame(11), 150 * MS)
    assert why is None and previous[0, 0, 0] == 10


def test_the_first_frame_and_one_after_a_forgotten_frame_pair_with_themselves() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5)
    frame = _frame(1)
    previous, why = pairs.pair("a", frame, 0)
    assert why == FIRST and previous is frame
    pairs.forget("a")  # e.g. the next frame was dropped as stale
    third = _frame(3)
    previous, why = pairs.pair("a", third, 200 * MS)
    assert why == FIRST and previous is third
    previous, why = pairs.pair("a", _frame(4), 300 * MS)
    assert why is None and previous is third


@pytest.mark.parametrize("step_ms", [501, -501, 3_600_000])
def test_a_capture_gap_beyond_the_limit_pairs_with_itself_and_the_next_pairs_normally(step_ms: int) -> None:
    pairs = MotionPairs(max_gap_seconds=0.5)
    pairs.pair("a", _frame(1), 10_000 * MS)
    after_gap = _frame(2)
    previous, why = pairs.pair("a", after_gap, (10_000 + step_ms) * MS)
    assert why == GAP and previous is after_gap
    previous, why = pairs.pair("a", _frame(3), (10_000 + step_ms + 100) * MS)
    assert why is None and previous is after_gap


def test_a_gap_at_the_limit_still_pairs() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5)
    pairs.pair("a", _frame(1), 0)
    assert pairs.pair("a", _frame(2), 500 * MS)[1] is None


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MotionPairs(max_gap_seconds=0)
