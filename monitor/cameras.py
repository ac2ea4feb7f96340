"""The cameras one service instance scores: their state, kept peak frame, partition, and the messages
their scored frames become.

No Kafka I/O: a scored frame goes in, its score message and alert events come out as typed wire
messages, ready to publish. A camera without a model (learning) gets thumbnails of its plain frames.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from kafka.structs import TopicPartition

from monitor import wire
from monitor.camera import AlertEvent, CameraState, PerCameraSettings
from monitor.config import ThumbnailSettings
from monitor.frames import ConsumedRecord, FrameError, FrameRecord, decode_frame
from monitor.localize import Region
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.scoring import Inference, LoadedModel
from monitor.snapshot import SnapshotError, render_snapshot

log = logging.getLogger(__name__)


@dataclass
class Peak:
    """The frame to draw an alert's snapshot from."""

    image: np.ndarray
    anomaly_map: np.ndarray
    regions: tuple[Region, ...]


@dataclass
class Scored:
    """What a batch's frames became: messages to publish, frames to dead-letter, capture times."""

    scores: list[wire.ScoreMessage] = field(default_factory=list)
    alerts: list[wire.AlertMessage] = field(default_factory=list)
    rejected: list[tuple[ConsumedRecord, FrameError]] = field(default_factory=list)
    thumbnails: list[wire.ThumbnailMessage] = field(default_factory=list)
    captures: list[float] = field(default_factory=list)  # Unix seconds, one per score


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def wire_regions(regions: tuple[Region, ...]) -> list[wire.Region]:
    return [wire.Region(bbox=r.bbox, score=float(r.score)) for r in regions]


class Cameras:
    """Per-camera state of the cameras this instance has seen.

    Args:
        settings: the `cameras` section (defaults and per-camera overrides).
        metrics: where per-camera gauges and counters go.
        stats: the run's totals.
    """

    def __init__(
        self,
        settings: PerCameraSettings,
        metrics: ServiceMetrics,
        stats: ServiceStats,
        thumbnails: ThumbnailSettings | None = None,
    ) -> None:
        self.settings = settings
        self.thumbnail_settings = thumbnails or ThumbnailSettings()
        self._thumbnailed: dict[str, float] = {}  # time.monotonic() of each camera's latest thumbnail
        self._undecodable: set[str] = set()  # learning cameras warned of a frame that does not decode
        self.metrics = metrics
        self.stats = stats
        self.states: dict[str, CameraState] = {}
        self.peaks: dict[str, Peak] = {}
        self.models: dict[str, wire.ModelInfo] = {}  # the model of each camera's latest score
        self.partition: dict[str, TopicPartition] = {}
        self.last_seen: dict[str, float] = {}  # time.monotonic() of each camera's latest scored frame
        self.status: dict[str, str] = {}  # ok, alert, learning or stalled (metrics.CAMERA_STATES)

    def seen(self, camera_id: str, partition: TopicPartition) -> None:
        """Note which partition a camera's frames come from (its state moves with it)."""
        self.partition.setdefault(camera_id, partition)

    def on(self, partitions: set[TopicPartition]) -> list[str]:
        """The cameras seen on these partitions."""
        return [c for c, tp in self.partition.items() if tp in partitions]

    def set_status(self, camera_id: str, status: str) -> None:
        if self.status.get(camera_id) != status:
            self.status[camera_id] = status
            self.metrics.set_camera_state(camera_id, status)

    def _switch_model(self, camera_id: str, model: LoadedModel) -> list[wire.AlertMessage]:
        """The camera's frames now come scored by `model`: a new model has its own calibration, so the
        camera's open alert ends (`model_changed`) and its smoothing starts over."""
        before = self.models.get(camera_id)
        ended = []
        if before is not None:
            ended = self.close(camera_id, "model_changed")
            self.states.pop(camera_id, None)
            self.metrics.model_swaps.labels(camera_id).inc()
            self.metrics.model_info.remove(
                camera_id, before.name, before.version, before.sha256, before.backend, before.precision
            )
            log.info(
                "camera %s: scored by %s %s (%s) from frame on",
                camera_id,
                model.info.name,
                model.info.version,
                model.info.sha256[:12],
            )
        info = model.info
        self.metrics.model_info.labels(
            camera_id, info.name, info.version, info.sha256, info.backend, info.precision
        ).set(1)
        self.models[camera_id] = info
        return ended

    def state(self, camera_id: str, model: LoadedModel) -> CameraState:
        if camera_id not in self.states:
            settings = self.settings.for_camera(camera_id)
            self.states[camera_id] = CameraState(camera_id, settings, model.score_scale, model.map_scale)
            self.metrics.track_camera(camera_id, settings.on_threshold)
        return self.states[camera_id]

    def score(self, inference: Inference) -> Scored:
        """Update each frame's camera with its score; the messages to publish, in frame order."""
        out = Scored()
        model = inference.model
        for frame, output in zip(inference.frames, inference.outputs, strict=True):
            if isinstance(output, FrameError):
                out.rejected.append((frame.consumed, output))
                continue
            raw, amap = output
            record = frame.record
            capture = record.capture_ts_ns / 1e9
            if self.models.get(record.camera_id) != model.info:
                out.alerts.extend(self._switch_model(record.camera_id, model))
            verdict = self.state(record.camera_id, model).update(
                record.frame_index, capture, raw, amap, frame.image.shape[:2]
            )
            if not verdict.valid:
                self.metrics.inference_errors.inc()
                out.rejected.append(
                    (
                        frame.consumed,
                        FrameError(wire.Reason.INVALID_SCORE, f"the model returned {raw} for this frame"),
                    )
                )
                continue
            assert verdict.score is not None
            if verdict.new_peak:
                self.peaks[record.camera_id] = Peak(frame.image, amap, verdict.regions)
            self.last_seen[record.camera_id] = time.monotonic()
            self.set_status(record.camera_id, "alert" if verdict.anomalous else "ok")
            published = time.time()
            out.scores.append(
                wire.ScoreMessage(
                    camera_id=record.camera_id,
                    frame_index=record.frame_index,
                    capture_ts=wire.datetime_from_ns(record.capture_ts_ns),
                    processed_ts=_ts(published),
                    score=verdict.score,
                    raw_score=raw,
                    anomalous=verdict.anomalous,
                    regions=wire_regions(verdict.regions),
                    model=model.info,
                    latency_ms=wire.Latency(
                        queue=max(0.0, (inference.started - capture) * 1e3),
                        inference=inference.seconds * 1e3 / len(inference.frames),
                        end_to_end=max(0.0, (published - capture) * 1e3),
                    ),
                )
            )
            out.captures.append(capture)
            thumbnail = self._thumbnail(frame.image, amap, verdict.regions, out.scores[-1])
            if thumbnail is not None:
                out.thumbnails.append(thumbnail)
            self.metrics.queue_seconds.observe(max(0.0, inference.started - capture))
            self.metrics.anomaly_score.labels(record.camera_id).set(verdict.score)
            self.metrics.last_frame_timestamp.labels(record.camera_id).set(capture)
            self.metrics.frames_processed.labels(record.camera_id).inc()
            self.stats.processed += 1
            out.alerts.extend(self.alert_messages(record.camera_id, list(verdict.events)))
            self.metrics.alerts_active.labels(record.camera_id).set(1 if verdict.anomalous else 0)
        return out

    def alert_messages(self, camera_id: str, events: list[AlertEvent]) -> list[wire.AlertMessage]:
        """The wire messages of a camera's alert events, with the peak frame's snapshot."""
        messages = []
        for event in events:
            messages.append(
                wire.AlertMessage(
                    type=event.type,
                    alert_id=uuid.UUID(event.alert_id),
                    camera_id=camera_id,
                    start_ts=_ts(event.start_ts),
                    end_ts=_ts(event.end_ts) if event.end_ts is not None else None,
                    frames=max(1, event.frames),
                    peak=wire.AlertPeak(
                        score=float(event.peak.score),
                        frame_index=event.peak.frame_index,
                        ts=_ts(event.peak.ts),
                        regions=wire_regions(event.peak.regions),
                    ),
                    snapshot=self._snapshot(camera_id),
                    model=self.models[camera_id],
                    end_reason=event.reason,
                )
            )
            if event.type == "start":
                self.stats.alerts += 1
                self.metrics.alerts.labels(camera_id).inc()
            if event.type == "end":
                self.metrics.alerts_active.labels(camera_id).set(0)
                self.peaks.pop(camera_id, None)
        return messages

    def _thumbnail_due(self, camera_id: str) -> bool:
        """True (and the interval starts again) when the camera may have a thumbnail now."""
        cfg = self.thumbnail_settings
        now = time.monotonic()
        if not cfg.enabled or now - self._thumbnailed.get(camera_id, -math.inf) < cfg.interval_seconds:
            return False
        self._thumbnailed[camera_id] = now
        return True

    def _render_thumbnail(
        self,
        camera_id: str,
        image: np.ndarray,
        amap: np.ndarray | None = None,
        regions: tuple[Region, ...] = (),
    ) -> bytes | None:
        cfg = self.thumbnail_settings
        state = self.states.get(camera_id)
        try:
            return render_snapshot(
                image,
                amap,
                regions,
                None if state is None else state.map_scale,
                max_side=cfg.max_side,
                max_bytes=cfg.max_bytes,
                quality=cfg.quality,
            )
        except SnapshotError as err:
            log.warning("camera %s: thumbnail left out: %s", camera_id, err)
            return None

    def _thumbnail(
        self, image: np.ndarray, amap: np.ndarray, regions: tuple[Region, ...], score: wire.ScoreMessage
    ) -> wire.ThumbnailMessage | None:
        """A small picture of the frame, at most one per camera per interval."""
        camera_id = score.camera_id
        if not self._thumbnail_due(camera_id):
            return None
        clock = time.perf_counter()
        data = self._render_thumbnail(camera_id, image, amap, regions)
        self.metrics.thumbnail_seconds.inc(time.perf_counter() - clock)
        if data is None:
            return None
        return wire.ThumbnailMessage(
            camera_id=camera_id,
            frame_index=score.frame_index,
            capture_ts=score.capture_ts,
            score=score.score,
            anomalous=score.anomalous,
            regions=score.regions,
            model=score.model,
            image=wire.Snapshot.from_image("image/jpeg", data),
        )

    def learning_thumbnails(
        self, records: Iterable[FrameRecord], max_pixels: int
    ) -> list[wire.ThumbnailMessage]:
        """Thumbnails of cameras without a model (learning): each record is the latest frame of its
        camera, decoded only when the camera's thumbnail is due (at most one per interval), drawn plain
        (no score, no model). A frame that does not decode gets none, and a warning once per camera."""
        out = []
        for record in records:
            camera_id = record.camera_id
            if not self._thumbnail_due(camera_id):
                continue
            clock = time.perf_counter()
            try:
                data = self._render_thumbnail(camera_id, decode_frame(record, max_pixels))
            except FrameError as err:
                if camera_id not in self._undecodable:
                    self._undecodable.add(camera_id)
                    log.warning("camera %s: no thumbnail of frame %d: %s", camera_id, record.frame_index, err)
                data = None
            finally:
                self.metrics.thumbnail_seconds.inc(time.perf_counter() - clock)
            if data is None:
                continue
            out.append(
                wire.ThumbnailMessage(
                    camera_id=camera_id,
                    frame_index=record.frame_index,
                    capture_ts=wire.datetime_from_ns(record.capture_ts_ns),
                    score=None,
                    anomalous=False,
                    model=None,
                    image=wire.Snapshot.from_image("image/jpeg", data),
                )
            )
        return out

    def _snapshot(self, camera_id: str) -> wire.Snapshot | None:
        peak = self.peaks.get(camera_id)
        if peak is None:
            return None
        try:
            image = self.states[camera_id].snapshot(peak.image, peak.anomaly_map, peak.regions)
        except SnapshotError as err:
            log.warning("camera %s: snapshot left out: %s", camera_id, err)
            return None
        return wire.Snapshot.from_image("image/jpeg", image) if image else None

    def close(self, camera_id: str, reason: wire.EndReason = "shutdown") -> list[wire.AlertMessage]:
        """End the camera's open alert, if any, for `reason`."""
        state = self.states.get(camera_id)
        return self.alert_messages(camera_id, state.close(reason)) if state is not None else []

    def stalled(self, now: float) -> list[wire.AlertMessage]:
        """Cameras that sent no frame for their stall time (`stall_seconds`, default their cutoff):
        marked stalled, their open alerts ended (`stalled`). `now` is time.monotonic()."""
        ended = []
        for camera_id, seen in self.last_seen.items():
            state = self.states.get(camera_id)
            if state is None or self.status.get(camera_id) == "stalled":
                continue
            settings = state.settings
            limit = settings.stall_seconds if settings.stall_seconds is not None else settings.cutoff_seconds
            if now - seen >= limit:
                ended.extend(self.close(camera_id, "stalled"))
                self.set_status(camera_id, "stalled")
        return ended

    def drop(self, camera_id: str) -> None:
        """Forget the camera (it moved to another instance); close it first."""
        self.states.pop(camera_id, None)
        self.peaks.pop(camera_id, None)
        info = self.models.pop(camera_id, None)
        if info is not None:
            self.metrics.model_info.remove(
                camera_id, info.name, info.version, info.sha256, info.backend, info.precision
            )
        self.partition.pop(camera_id, None)
        self.last_seen.pop(camera_id, None)
        self._thumbnailed.pop(camera_id, None)
        self._undecodable.discard(camera_id)
        self.status.pop(camera_id, None)
