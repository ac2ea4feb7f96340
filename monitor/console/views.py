"""The console's JSON documents: what `/api/...` returns and the live events carry.

Built from the store's rows; the fields that come from the wire reuse its types (`ModelInfo`,
`AlertPeak`, `Timestamp`), so a score or a box reads the same here as on the topics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from monitor.wire import AlertPeak, EndReason, ModelInfo, Timestamp, Verdict

CameraState = Literal["ok", "alert", "learning", "stalled"]
THRESHOLD = 0.5
"""The calibrated alert threshold on the normalized score scale (wire format v1)."""


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class ScorePoint(_View):
    """One scored frame."""

    frame_index: int
    ts: Timestamp = Field(description="capture time")
    score: float


class ThumbnailView(_View):
    """The camera's latest thumbnail (heatmap and boxes drawn by the service; the plain frame while
    the camera is learning)."""

    url: str
    frame_index: int
    ts: Timestamp
    boxes: int


class CameraView(_View):
    """A camera as the grid shows it."""

    camera_id: str
    state: CameraState = Field(
        description="stalled: no score or thumbnail for the console's --stale-after, or its last alert "
        "ended stalled and no frame came since; alert: an alert is open; learning: its latest thumbnail "
        "is of a frame the service had no model for, and no score came since; ok otherwise"
    )
    last_score: float | None
    last_frame_index: int | None
    last_ts: Timestamp | None = Field(description="capture time of the latest scored frame")
    model: ModelInfo | None = Field(description="the model of the latest score (null before the first)")
    thumbnail: ThumbnailView | None
    recent: list[ScorePoint] = Field(description="the latest scores, oldest first (the sparkline)")
    open_alert_id: UUID | None
    alerts_24h: int = Field(description="alerts started in the last 24 hours")

    @property
    def last_frame_ts(self) -> datetime | None:
        """Capture time of the latest frame heard of: the latest score's, or a newer thumbnail's (all a
        learning camera has)."""
        thumbnail_ts = None if self.thumbnail is None else self.thumbnail.ts
        times = [t for t in (self.last_ts, thumbnail_ts) if t is not None]
        return max(times, default=None)


class CameraList(_View):
    cameras: list[CameraView]
    threshold: float = THRESHOLD


class FeedbackView(_View):
    """An operator's verdict on an alert."""

    verdict: Verdict
    note: str
    ts: Timestamp
    published: bool = Field(description="sent to the feedback topic (else retried)")


class AlertEvent(_View):
    """One lifecycle event of an alert, as received."""

    type: Literal["start", "update", "end"]
    ts: Timestamp = Field(description="start: start_ts; update: the new peak's time; end: end_ts")
    frames: int
    peak_score: float
    end_reason: EndReason | None


class AlertView(_View):
    """An alert as the list shows it."""

    alert_id: UUID
    camera_id: str
    start_ts: Timestamp
    end_ts: Timestamp | None
    end_reason: EndReason | None
    open: bool
    duration_seconds: float = Field(description="start to end; while open, start to the latest score")
    frames: int
    peak: AlertPeak
    model: ModelInfo
    snapshot_url: str | None
    verdict: Verdict | None = Field(description="the latest feedback, if any")


class AlertDetail(AlertView):
    """An alert with its lifecycle, its score curve and its feedback."""

    events: list[AlertEvent]
    scores: list[ScorePoint] = Field(description="the camera's scores from start to end (the curve)")
    feedback: list[FeedbackView]


class AlertList(_View):
    alerts: list[AlertView]
    next_before: Timestamp | None = Field(description="pass as ?before= for the next (older) page")


class FeedbackRequest(BaseModel):
    """The body of POST /api/alerts/{alert_id}/feedback."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    note: str = Field("", max_length=1000)
