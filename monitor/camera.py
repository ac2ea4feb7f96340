"""Per-camera state: score normalization, causal smoothing, the alert lifecycle and localization.

Pure logic, no I/O: the service calls `CameraState.update` once per scored frame, in frame order,
and publishes what the returned `FrameVerdict` says. Times are Unix seconds (float).
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.localize import MapScale, Region, localize, mask_to_grid, polygon_mask, work_grid
from monitor.snapshot import render_snapshot
from monitor.wire import EndReason

CameraId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
Point = tuple[float, float]
# Unix-second floats resolve ~0.2 us today, so a duration that is exactly N seconds may come out a
# hair short; one microsecond of slack keeps "after N seconds" on the frame an operator would expect.
TIME_SLACK = 1e-6


class SnapshotSettings(BaseModel):
    """How the peak frame attached to alerts is rendered."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = Field(True, description="attach a JPEG of the peak frame to alert events")
    # Kafka's default record limit is 1 MB and base64 adds a third: 200 kB keeps alerts well under it.
    max_bytes: int = Field(200_000, ge=4096, description="size cap of the JPEG in bytes")
    max_side: int = Field(640, ge=64, le=8192, description="longest side of the snapshot in pixels")
    quality: int = Field(85, ge=40, le=100, description="starting JPEG quality, lowered to fit max_bytes")


class CameraSettings(BaseModel):
    """Alerting and localization settings of one camera; scores are on the calibrated [0, 1] scale."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    smoothing_frames: int = Field(
        8, ge=1, le=1000, description="causal mean over this many latest frames (1 = no smoothing)"
    )
    on_threshold: float = Field(
        0.5, gt=0, lt=1, description="smoothed score at or above which a frame counts toward an alert"
    )
    off_threshold: float = Field(
        0.4, ge=0, lt=1, description="smoothed score below which an open alert starts to end"
    )
    min_frames: int = Field(
        3, ge=1, description="consecutive frames at or above on_threshold before an alert starts"
    )
    cutoff_seconds: float = Field(
        2.0, ge=0, description="an alert ends after its score stayed below off_threshold this long"
    )
    cooldown_seconds: float = Field(5.0, ge=0, description="no new alert starts this soon after an end")
    stall_seconds: float | None = Field(
        None,
        gt=0,
        description="no frame for this long (wall clock): the camera shows as stalled and its open alert "
        "ends with reason stalled; null: cutoff_seconds",
    )
    update_interval_seconds: float = Field(
        1.0, ge=0, description="at most one `update` event (new peak) per this many seconds"
    )
    ignore_polygons: list[list[Point]] = Field(
        default_factory=list,
        description="areas to ignore, each a list of [x, y] points in source-frame pixels",
    )
    min_region_area: float = Field(
        0.0, ge=0, description="regions smaller than this many source pixels are dropped"
    )
    max_regions: int = Field(16, ge=1, le=1000, description="most regions reported per frame")
    map_threshold: float | None = Field(
        None, description="anomaly-map threshold in raw map units (None: the model's)"
    )
    snapshot: SnapshotSettings = Field(default_factory=SnapshotSettings)

    @field_validator("ignore_polygons")
    @classmethod
    def _check_polygons(cls, polygons: list[list[Point]]) -> list[list[Point]]:
        for i, polygon in enumerate(polygons):
            if len(polygon) < 3:
                raise ValueError(
                    f"ignore_polygons[{i}] has {len(polygon)} points; a polygon needs at least 3 "
                    "[x, y] points in source pixels"
                )
        return polygons

    @model_validator(mode="after")
    def _check_thresholds(self) -> CameraSettings:
        if self.off_threshold >= self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must be below on_threshold ({self.on_threshold}); "
                "lower off_threshold or raise on_threshold"
            )
        return self

    def merged(self, overrides: Mapping[str, Any]) -> CameraSettings:
        """These settings with some fields replaced; `snapshot` fields merge one by one.

        Raises:
            pydantic.ValidationError: an override is unknown or invalid.
        """
        data = self.model_dump()
        for key, value in overrides.items():
            if key == "snapshot" and isinstance(value, Mapping):
                data["snapshot"] = {**data["snapshot"], **value}
            else:
                data[key] = value
        return CameraSettings.model_validate(data)


def _first_error(err: ValidationError, prefix: str) -> str:
    """One line for the first error, its field path under `prefix`, e.g. `cameras.gate-1.min_frames: ...`."""
    first = err.errors()[0]
    path = ".".join([prefix, *(str(p) for p in first["loc"])])
    return f"{path}: {str(first['msg']).removeprefix('Value error, ')}"


class PerCameraSettings(BaseModel):
    """Settings for every camera: defaults, and per-camera overrides of any of their fields.

    Overrides replace the default's value (a camera's `ignore_polygons` replaces the default list);
    every camera's merged settings are checked when this is built, so a bad override fails at start.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: CameraSettings = Field(default_factory=CameraSettings)
    cameras: dict[CameraId, dict[str, Any]] = Field(
        default_factory=dict, description="camera id -> the fields that differ from the defaults"
    )
    _resolved: dict[str, CameraSettings] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> PerCameraSettings:
        for camera_id, overrides in self.cameras.items():
            try:
                self._resolved[camera_id] = self.defaults.merged(overrides)
            except ValidationError as err:
                raise ValueError(_first_error(err, f"cameras.{camera_id}")) from None
        return self

    def for_camera(self, camera_id: str) -> CameraSettings:
        """The merged settings of a camera (the defaults for a camera without overrides)."""
        return self._resolved.get(camera_id, self.defaults)


class ScoreScale(Protocol):
    """Maps raw frame scores to [0, 1] with the calibrated threshold at 0.5 (`model.Calibration`)."""

    def normalize(self, raw: np.ndarray | float) -> np.ndarray: ...


@dataclass(frozen=True)
class AlertPeak:
    """The highest-scoring frame of an alert so far."""

    score: float
    frame_index: int
    ts: float
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class AlertEvent:
    """One lifecycle event of an alert, for the alerts topic.

    Attributes:
        type: `start`, `update` (a new peak) or `end`.
        alert_id: uuid4, the same for all events of one alert.
        camera_id: the camera.
        start_ts: capture time of the alert's first frame.
        end_ts: capture time of its last frame at or above the off threshold (`end` only).
        frames: frames from the first to the latest (`end`: the last) frame of the alert.
        peak: the highest-scoring frame so far.
        new_peak: the frame that produced this event is the peak (keep it for the snapshot).
        reason: why an `end` ended it (the wire's `end_reason`); None on start and update.
    """

    type: Literal["start", "update", "end"]
    alert_id: str
    camera_id: str
    start_ts: float
    end_ts: float | None
    frames: int
    peak: AlertPeak
    new_peak: bool
    reason: EndReason | None = None


@dataclass(frozen=True)
class TrackerStep:
    """What one frame did to the alert lifecycle."""

    events: tuple[AlertEvent, ...]
    new_peak: bool
    alert_id: str | None


class AlertTracker:
    """The alert state machine of one camera over smoothed scores.

    - start: the smoothed score was at or above `on_threshold` for `min_frames` consecutive frames,
      and `cooldown_seconds` have passed since the last end;
    - update: a new peak, at most once per `update_interval_seconds` (a peak that arrives sooner is
      reported when the interval has passed);
    - end: the smoothed score stayed below `off_threshold` for `cutoff_seconds`.

    Between the two thresholds nothing changes (hysteresis). An invalid frame (no score) counts as
    below both thresholds: it never starts or prolongs an alert. Durations follow the capture times;
    a step back in capture time (a camera clock reset) counts as no time passing.
    """

    def __init__(self, camera_id: str, settings: CameraSettings) -> None:
        self.camera_id = camera_id
        self.settings = settings
        # Time for durations: advances by the capture-time steps between frames, never backwards.
        self._clock = 0.0
        self._last_ts: float | None = None
        # The run of frames at or above on_threshold that may become an alert.
        self._streak = 0
        self._streak_start = 0.0
        self._peak: AlertPeak | None = None
        self._last_end: float | None = None
        # The open alert.
        self._alert_id: str | None = None
        self._start_ts = 0.0
        self._frames = 0
        self._last_over_ts = 0.0
        self._frames_at_last_over = 0
        self._under_since: float | None = None
        self._last_event = 0.0
        self._update_due = False

    @property
    def alert_id(self) -> str | None:
        """The id of the open alert, or None."""
        return self._alert_id

    def _event(
        self, kind: Literal["start", "update", "end"], new_peak: bool, reason: EndReason | None = None
    ) -> AlertEvent:
        assert self._alert_id is not None and self._peak is not None
        ending = kind == "end"
        return AlertEvent(
            type=kind,
            alert_id=self._alert_id,
            camera_id=self.camera_id,
            start_ts=self._start_ts,
            end_ts=self._last_over_ts if ending else None,
            frames=self._frames_at_last_over if ending else self._frames,
            peak=self._peak,
            new_peak=new_peak,
            reason=reason,
        )

    def observe(
        self, frame_index: int, ts: float, smoothed: float | None, score: float, regions: Sequence[Region]
    ) -> TrackerStep:
        """Advance by one frame.

        Args:
            frame_index: the camera's frame index.
            ts: capture time, Unix seconds.
            smoothed: the smoothed score that the thresholds apply to; None for an invalid frame.
            score: this frame's own score, which ranks peaks.
            regions: this frame's regions, kept with the peak.
        """
        if self._last_ts is not None:
            self._clock += max(0.0, ts - self._last_ts)
        self._last_ts = ts
        clock = self._clock
        # An invalid frame sits below both thresholds and cannot be a peak.
        valid = smoothed is not None and math.isfinite(smoothed) and math.isfinite(score)
        level = smoothed if valid and smoothed is not None else -math.inf
        over_on, over_off = level >= self.settings.on_threshold, level >= self.settings.off_threshold
        new_peak = valid and (self._peak is None or score > self._peak.score)
        candidate = AlertPeak(score, frame_index, ts, tuple(regions)) if new_peak else None

        if self._alert_id is None:
            if not over_on:
                self._streak, self._peak = 0, None
                return TrackerStep((), False, None)
            if self._streak == 0:
                self._streak_start = ts
            self._streak += 1
            if candidate is not None:
                self._peak = candidate
            cooling = self._last_end is not None and not self._passed(
                self._last_end, self.settings.cooldown_seconds
            )
            if self._streak < self.settings.min_frames or cooling:
                return TrackerStep((), new_peak, None)
            self._alert_id = str(uuid.uuid4())
            self._start_ts = self._streak_start
            self._frames = self._frames_at_last_over = self._streak
            self._last_over_ts, self._last_event = ts, clock
            self._under_since, self._update_due = None, False
            return TrackerStep((self._event("start", new_peak),), new_peak, self._alert_id)

        self._frames += 1
        if candidate is not None:
            self._peak, self._update_due = candidate, True
        if over_off:
            self._under_since = None
            self._last_over_ts, self._frames_at_last_over = ts, self._frames
        else:
            if self._under_since is None:
                self._under_since = clock
            if self._passed(self._under_since, self.settings.cutoff_seconds):
                end = self._event("end", new_peak, "cleared")
                self._reset(clock)
                return TrackerStep((end,), new_peak, None)
        events: tuple[AlertEvent, ...] = ()
        if self._update_due and self._passed(self._last_event, self.settings.update_interval_seconds):
            events = (self._event("update", new_peak),)
            self._last_event, self._update_due = clock, False
        return TrackerStep(events, new_peak, self._alert_id)

    def close(self, reason: EndReason = "shutdown") -> list[AlertEvent]:
        """End the open alert now, for `reason` (shutdown, moved, stalled, model_changed); [] if none
        is open."""
        if self._alert_id is None:
            return []
        end = self._event("end", False, reason)
        self._reset(self._clock)
        return [end]

    def _passed(self, since: float, seconds: float) -> bool:
        return self._clock - since >= seconds - TIME_SLACK

    def _reset(self, clock: float) -> None:
        self._alert_id, self._peak, self._streak = None, None, 0
        self._last_end = clock


@dataclass(frozen=True)
class FrameVerdict:
    """What the service publishes for one frame.

    Attributes:
        camera_id: the camera.
        frame_index: the camera's frame index.
        capture_ts: capture time, Unix seconds.
        raw_score: the model's score as given.
        score: normalized to [0, 1] (0.5 = calibrated threshold); None when the raw score is NaN or
            infinite: the frame is invalid, changes no state, and should be counted or dead-lettered.
        smoothed: causal mean of the latest frames' alert scores (a frame whose hot area is all
            ignored or too small scores 0 there); None when invalid.
        anomalous: an alert is open at this frame.
        suppressed: the map was hot only inside ignore polygons or in regions under min_region_area.
        regions: anomalous regions, highest score first, in source-frame pixels.
        new_peak: this frame is the peak of the pending or open alert; keep it (frame, map, regions)
            to render the snapshot of the next `start`, `update` or `end` event.
        alert_id: the open alert's id, or None.
        events: alert lifecycle events this frame caused, in order.
    """

    camera_id: str
    frame_index: int
    capture_ts: float
    raw_score: float
    score: float | None
    smoothed: float | None
    anomalous: bool
    suppressed: bool
    regions: tuple[Region, ...]
    new_peak: bool
    alert_id: str | None
    events: tuple[AlertEvent, ...]

    @property
    def valid(self) -> bool:
        """False when the model's score was NaN or infinite."""
        return self.score is not None


class CameraState:
    """Everything the monitor remembers about one camera between frames.

    Args:
        camera_id: the camera.
        settings: its merged settings (`PerCameraSettings.for_camera`).
        score_scale: raw frame score to [0, 1], e.g. the model's `Calibration`.
        map_scale: the model's anomaly-map threshold and scale; `settings.map_threshold` overrides
            the threshold.
    """

    def __init__(
        self, camera_id: str, settings: CameraSettings, score_scale: ScoreScale, map_scale: MapScale
    ) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self.score_scale = score_scale
        self.map_scale = map_scale.with_threshold(settings.map_threshold)
        self.tracker = AlertTracker(camera_id, settings)
        self._recent: deque[float] = deque(maxlen=settings.smoothing_frames)
        self._ignore: dict[tuple[tuple[int, int], tuple[int, int]], np.ndarray] = {}

    def _ignore_mask(self, map_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray | None:
        """The ignore polygons rasterized on the localization grid, once per frame and map size."""
        if not self.settings.ignore_polygons:
            return None
        key = (map_hw, frame_hw)
        if key not in self._ignore:
            source = polygon_mask(self.settings.ignore_polygons, frame_hw)
            self._ignore[key] = mask_to_grid(source, work_grid(map_hw, frame_hw))
        return self._ignore[key]

    def update(
        self,
        frame_index: int,
        capture_ts: float,
        score: float,
        anomaly_map: np.ndarray | None,
        frame_hw: tuple[int, int],
    ) -> FrameVerdict:
        """Take one scored frame, in the camera's frame order.

        Args:
            frame_index: the camera's frame index.
            capture_ts: capture time, Unix seconds.
            score: the model's raw score.
            anomaly_map: the model's raw 2-D anomaly map for the frame, or None (no localization).
            frame_hw: the source frame's (height, width); boxes are in its pixels.
        """
        raw = float(score)
        normalized: float | None = None
        smoothed: float | None = None
        regions: tuple[Region, ...] = ()
        suppressed = False
        if not math.isfinite(raw):
            # No score: the frame breaks a min_frames streak and never opens or extends an alert.
            step = self.tracker.observe(frame_index, capture_ts, None, 0.0, ())
        else:
            normalized = float(self.score_scale.normalize(raw))
            if anomaly_map is not None:
                if anomaly_map.ndim != 2:
                    raise ValueError(f"anomaly map must be 2-D, got shape {anomaly_map.shape}")
                map_hw = (int(anomaly_map.shape[0]), int(anomaly_map.shape[1]))
                found = localize(
                    anomaly_map,
                    frame_hw,
                    self.map_scale,
                    min_area=self.settings.min_region_area,
                    ignore_mask=self._ignore_mask(map_hw, frame_hw),
                    max_regions=self.settings.max_regions,
                )
                regions, suppressed = found.regions, found.suppressed
            # A frame whose hot area is all ignored or too small is normal as far as alerts go.
            alert_score = 0.0 if suppressed else normalized
            self._recent.append(alert_score)
            smoothed = sum(self._recent) / len(self._recent)
            step = self.tracker.observe(frame_index, capture_ts, smoothed, alert_score, regions)
        return FrameVerdict(
            camera_id=self.camera_id,
            frame_index=frame_index,
            capture_ts=capture_ts,
            raw_score=raw,
            score=normalized,
            smoothed=smoothed,
            anomalous=step.alert_id is not None,
            suppressed=suppressed,
            regions=regions,
            new_peak=step.new_peak and normalized is not None,
            alert_id=step.alert_id,
            events=step.events,
        )

    def close(self, reason: EndReason = "shutdown") -> list[AlertEvent]:
        """End the open alert, if any, for `reason` (shutdown, moved, stalled, model_changed)."""
        return self.tracker.close(reason)

    @property
    def alerting(self) -> bool:
        """An alert is open."""
        return self.tracker.alert_id is not None

    def snapshot(
        self, frame: np.ndarray, anomaly_map: np.ndarray | None, regions: Sequence[Region]
    ) -> bytes | None:
        """The JPEG to attach to an alert event for a kept peak frame; None when snapshots are off.

        Raises:
            monitor.snapshot.SnapshotError: it cannot fit under `snapshot.max_bytes`.
        """
        cfg = self.settings.snapshot
        if not cfg.enabled:
            return None
        return render_snapshot(
            frame,
            anomaly_map,
            regions,
            self.map_scale,
            max_side=cfg.max_side,
            max_bytes=cfg.max_bytes,
            quality=cfg.quality,
        )
