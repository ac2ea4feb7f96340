"""Which earlier frame a camera's frame is paired with for the model's motion cues.

A motion model reads the frame and an earlier one as one input, and its speed cues assume the two
are one frame interval of its training footage apart. Paired across a longer gap they read the gap as
speed: with the committed Ped2 AnoMem, every held-out normal frame paired with the frame two back
scores above the calibrated threshold (frame one back: 1 %; `benchmarks/results/motion_gaps.md`). So
a frame is scored without motion (paired with itself, as a camera's first frame always was) when no
suitable earlier frame is known:

- `first`: no earlier frame of the camera in this instance (start, rebalance, or, by default, the
  previous frame was dropped as stale or dead-lettered here: the one before it is two intervals back);
- `gap`: no earlier frame captured at the right distance: by default, the previous frame was captured
  more than `max_gap_seconds` before (a camera back after an outage; frames out of order by as much);
  with `interval_seconds`, none within half an interval of one interval back.

By default a frame is paired with the camera's previous frame, which suits cameras that deliver the
training footage's frame rate. With `interval_seconds` (1 / that rate) each frame is paired with the
camera's frame captured closest to `interval_seconds` before it, between half and one and a half
intervals: a 30 fps camera feeding a model trained on 10 fps footage is paired three frames back and
every frame is still scored; a camera slower than 1.5 intervals gets no motion (`gap`) rather than
speeds scaled by its slowness. A source that loses single frames (a lossy RTSP link) is caught by the
interval, or by a `max_gap_seconds` below two frame intervals (0.15 s for 10 fps cameras).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

FIRST = "first"
GAP = "gap"
NO_MOTION_REASONS = (FIRST, GAP)
MAX_BUFFERED = 64  # earlier frames kept per camera with `interval_seconds` (bounds odd timestamps)


@dataclass(slots=True)
class _Earlier:
    frame: np.ndarray
    capture_ts_ns: int


class MotionPairs:
    """The recent frames of every camera and the rule that picks the one a new frame is paired with."""

    def __init__(self, max_gap_seconds: float, interval_seconds: float | None = None) -> None:
        if max_gap_seconds <= 0:
            raise ValueError(f"max_gap_seconds must be positive, not {max_gap_seconds}")
        if interval_seconds is not None and interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, not {interval_seconds}")
        self.max_gap_ns = int(max_gap_seconds * 1e9)
        self.interval_ns = None if interval_seconds is None else int(interval_seconds * 1e9)
        self._earlier: dict[str, deque[_Earlier]] = {}

    def pair(self, camera_id: str, frame: np.ndarray, capture_ts_ns: int) -> tuple[np.ndarray, str | None]:
        """The frame to pair `frame` with, and why it is `frame` itself (None: an earlier frame).

        `frame` is remembered for the camera's next frames either way.
        """
        earlier = self._earlier.setdefault(
            camera_id, deque(maxlen=1 if self.interval_ns is None else MAX_BUFFERED)
        )
        chosen, reason = self._choose(earlier, capture_ts_ns)
        earlier.append(_Earlier(frame, capture_ts_ns))
        if self.interval_ns is not None:
            # Frames further back than the window can serve no later frame (capture times increase).
            while earlier and capture_ts_ns - earlier[0].capture_ts_ns > 3 * self.interval_ns // 2:
                earlier.popleft()
        return (frame, reason) if chosen is None else (chosen, None)

    def _choose(self, earlier: deque[_Earlier], capture_ts_ns: int) -> tuple[np.ndarray | None, str | None]:
        if not earlier:
            return None, FIRST
        if self.interval_ns is None:
            last = earlier[-1]
            if abs(capture_ts_ns - last.capture_ts_ns) > self.max_gap_ns:
                return None, GAP
            return last.frame, None
        interval = self.interval_ns
        fits = [e for e in earlier if interval // 2 <= capture_ts_ns - e.capture_ts_ns <= 3 * interval // 2]
        if not fits:
            return None, GAP
        # On a tie the more recent frame: motion read a little slow rather than a little fast.
        return min(reversed(fits), key=lambda e: abs(capture_ts_ns - e.capture_ts_ns - interval)).frame, None

    def skipped(self, camera_id: str) -> None:
        """A frame of the camera was not scored here (stale, corrupt): without `interval_seconds` its
        next frame must not be paired with the one before the skipped frame. With it, capture times
        decide, and frames at the right distance stay usable."""
        if self.interval_ns is None:
            self.forget(camera_id)

    def forget(self, camera_id: str) -> None:
        """Drop the camera's earlier frames (it left this instance)."""
        self._earlier.pop(camera_id, None)
