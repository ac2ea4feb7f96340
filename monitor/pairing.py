"""Which earlier frame a camera's frame is paired with for the model's motion cues.

A motion model reads the frame and its predecessor as one input, and its speed cues assume the two are
one frame interval apart, as in the training footage. Paired across a gap they read the gap as speed:
with the committed Ped2 AnoMem, every held-out normal frame paired with the frame two back scores
above the alert threshold (frame one back: 1 %). So a frame is scored without motion (paired with
itself, as a camera's first frame always was) when its predecessor is unknown or too far back:

- `first`: no earlier frame of the camera in this instance (start, rebalance, or the previous frame
  was dropped as stale or dead-lettered here: the one before it is two intervals back);
- `gap`: the capture times are further apart than `max_gap_seconds` (a camera back after an outage;
  frames out of order by as much).

A source that skips single frames at its end (a lossy RTSP link) is not caught unless
`max_gap_seconds` is set below two of its frame intervals (e.g. 0.15 s for 10 fps cameras).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST = "first"
GAP = "gap"
NO_MOTION_REASONS = (FIRST, GAP)


@dataclass(slots=True)
class _Last:
    frame: np.ndarray
    capture_ts_ns: int


class MotionPairs:
    """The last frame of every camera and the rule that pairs the next one with it."""

    def __init__(self, max_gap_seconds: float) -> None:
        if max_gap_seconds <= 0:
            raise ValueError(f"max_gap_seconds must be positive, not {max_gap_seconds}")
        self.max_gap_ns = int(max_gap_seconds * 1e9)
        self._last: dict[str, _Last] = {}

    def pair(self, camera_id: str, frame: np.ndarray, capture_ts_ns: int) -> tuple[np.ndarray, str | None]:
        """The frame to pair `frame` with, and why it is `frame` itself (None: its predecessor).

        `frame` becomes the camera's last frame either way.
        """
        last = self._last.get(camera_id)
        self._last[camera_id] = _Last(frame, capture_ts_ns)
        if last is None:
            return frame, FIRST
        if abs(capture_ts_ns - last.capture_ts_ns) > self.max_gap_ns:
            return frame, GAP
        return last.frame, None

    def forget(self, camera_id: str) -> None:
        """Drop the camera's last frame: a frame of it was skipped, or the camera left this instance."""
        self._last.pop(camera_id, None)
