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
    pairs.skipped("a")  # e.g. the next frame was dropped as stale
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


def test_the_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_gap_seconds must be positive"):
        MotionPairs(max_gap_seconds=0)
    with pytest.raises(ValueError, match="interval_seconds must be positive"):
        MotionPairs(max_gap_seconds=0.5, interval_seconds=0)


def _stream(pairs: MotionPairs, times_ms: list[float], camera: str = "a") -> list[tuple[int, str | None]]:
    """Frame i (value i) captured at times_ms[i]: (value of the frame it is paired with, reason)."""
    out = []
    for i, t in enumerate(times_ms):
        previous, why = pairs.pair(camera, _frame(i), int(t * MS))
        out.append((int(previous[0, 0, 0]), why))
    return out


def test_with_an_interval_a_30_fps_camera_pairs_three_frames_back() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5, interval_seconds=0.1)
    paired = _stream(pairs, [i * 1000 / 30 for i in range(10)])
    assert paired[0] == (0, FIRST)
    assert paired[1] == (1, GAP)  # 33 ms back is under half an interval
    assert paired[2] == (0, None)  # 67 ms: the only frame within half an interval of 100 ms
    assert paired[3:] == [(i - 3, None) for i in range(3, 10)]


def test_with_an_interval_the_closest_frame_wins_and_a_slow_camera_gets_no_motion() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5, interval_seconds=0.1)
    assert _stream(pairs, [0, 40, 80, 120, 160])[3:] == [(1, None), (2, None)]  # 25 fps: 80 ms back
    slow = MotionPairs(max_gap_seconds=0.5, interval_seconds=0.1)
    assert _stream(slow, [0, 200, 400]) == [(0, FIRST), (1, GAP), (2, GAP)]  # 5 fps: 200 ms back


def test_with_an_interval_a_skipped_frame_leaves_the_others_usable() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5, interval_seconds=0.1)
    times = [i * 1000 / 30 for i in range(8)]
    pairs.pair("a", _frame(0), 0)
    for i in range(1, 8):
        if i == 4:
            pairs.skipped("a")  # frame 4 dropped: frame 7 has no frame 100 ms back, 6 and 5 still do
            continue
        previous, why = pairs.pair("a", _frame(i), int(times[i] * MS))
        if i in (5, 6):
            assert (previous[0, 0, 0], why) == (i - 3, None)
    previous, why = pairs.pair("a", _frame(8), int(1000 / 30 * 8 * MS))
    assert (previous[0, 0, 0], why) == (5, None)


def test_with_an_interval_only_frames_within_the_window_are_kept() -> None:
    pairs = MotionPairs(max_gap_seconds=0.5, interval_seconds=0.1)
    _stream(pairs, [i * 10.0 for i in range(200)])  # 100 fps for 2 s
    kept = pairs._earlier["a"]
    assert 0 < len(kept) <= 16 and kept[-1].capture_ts_ns - kept[0].capture_ts_ns <= 150 * MS
