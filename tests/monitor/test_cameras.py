"""Cameras: scored frames become score messages and alert events with the model that scored them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from monitor.camera import PerCameraSettings
from monitor.cameras import Cameras
from monitor.config import IntakeSettings
from monitor.frames import FrameError
from monitor.intake import Frame, Intake
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.scoring import Inference, LoadedModel
from monitor.wire import Reason
from tests.monitor.parts import loaded, record


@pytest.fixture(scope="module")
def model(tiny_artifact: Path) -> LoadedModel:
    return loaded(tiny_artifact)


def _inference(model: LoadedModel, raw: list[float], hot: bool = True) -> Inference:
    start = time.time() - len(raw) * 0.1
    intake = Intake(IntakeSettings(mode="replay"), lambda c: model, ServiceMetrics())
    frames: list[Frame] = intake.take(
        [record(index=i, capture_s=start + i * 0.1) for i in range(len(raw))]
    ).frames
    h, w = model.runtime.model.map_shape
    amap = np.zeros((h, w), np.float32)
    if hot:  # one hot corner, far above the map threshold
        amap[: h // 2, : w // 2] = model.map_scale.threshold + 50 * model.map_scale.scale
    outputs: list[tuple[float, np.ndarray] | FrameError] = [(r, amap) for r in raw]
    return Inference(frames, model, time.time(), 0.01 * len(raw), outputs)


def _raw(model: LoadedModel, units: float) -> float:
    """A raw score `units` logistic units from the model's threshold."""
    calibration = model.runtime.model.calibration
    assert calibration is not None
    return calibration.threshold + units * calibration.scale


def _cameras() -> tuple[Cameras, ServiceStats]:
    stats = ServiceStats()
    settings = PerCameraSettings.model_validate({"defaults": {"smoothing_frames": 1, "min_frames": 2}})
    return Cameras(settings, ServiceMetrics(), stats), stats


def test_anomalous_frames_open_an_alert_that_names_the_model_and_carries_a_snapshot(
    model: LoadedModel,
) -> None:
    cameras, stats = _cameras()
    high = _raw(model, +20)
    scored = cameras.score(_inference(model, [high] * 4))
    assert [s.frame_index for s in scored.scores] == [0, 1, 2, 3]
    assert all(s.model == model.info for s in scored.scores)
    assert [s.anomalous for s in scored.scores] == [False, True, True, True]
    assert all(s.score > 0.99 and s.regions for s in scored.scores)
    assert [a.type for a in scored.alerts] == ["start"]
    start = scored.alerts[0]
    assert start.model == model.info and start.snapshot is not None and start.peak.regions
    assert stats.processed == 4 and stats.alerts == 1 and len(scored.captures) == 4
    ended = cameras.close("gate-1")
    assert [a.type for a in ended] == ["end"] and ended[0].alert_id == start.alert_id


def test_normal_frames_publish_scores_and_no_alert(model: LoadedModel) -> None:
    cameras, _ = _cameras()
    low = _raw(model, -20)
    scored = cameras.score(_inference(model, [low] * 3, hot=False))
    assert [s.anomalous for s in scored.scores] == [False] * 3 and scored.alerts == []
    assert all(s.score < 0.01 and not s.regions for s in scored.scores)
    assert cameras.close("gate-1") == []


def test_a_non_finite_score_is_rejected_and_the_frames_around_it_are_scored(model: LoadedModel) -> None:
    cameras, _ = _cameras()
    scored = cameras.score(_inference(model, [0.0, float("nan"), 0.0], hot=False))
    assert [s.frame_index for s in scored.scores] == [0, 2]
    assert [(r.offset, e.reason) for r, e in scored.rejected] == [(1, Reason.INVALID_SCORE)]


def test_cameras_on_revoked_partitions_are_found_and_dropped(model: LoadedModel) -> None:
    from kafka.structs import TopicPartition

    cameras, _ = _cameras()
    cameras.seen("a", TopicPartition("f", 0))
    cameras.seen("b", TopicPartition("f", 1))
    cameras.score(_inference(model, [0.0]))
    assert cameras.on({TopicPartition("f", 1)}) == ["b"]
    cameras.drop("gate-1")
    assert "gate-1" not in cameras.states


def test_a_thumbnail_per_camera_at_most_once_per_interval_with_the_frame_drawn(model: LoadedModel) -> None:
    from monitor.config import ThumbnailSettings

    stats = ServiceStats()
    settings = PerCameraSettings.model_validate({"defaults": {"smoothing_frames": 1}})
    cameras = Cameras(settings, ServiceMetrics(), stats, ThumbnailSettings(interval_seconds=60, max_side=64))
    scored = cameras.score(_inference(model, [_raw(model, 20)] * 3))
    (thumbnail,) = scored.thumbnails
    assert (thumbnail.camera_id, thumbnail.frame_index) == ("gate-1", 0)
    assert thumbnail.model == model.info and thumbnail.regions == scored.scores[0].regions
    image = cv2.imdecode(np.frombuffer(thumbnail.image.image_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert max(image.shape[:2]) <= 64
    assert cameras.score(_inference(model, [0.0])).thumbnails == []  # within the interval
    off = Cameras(settings, ServiceMetrics(), ServiceStats(), ThumbnailSettings(enabled=False))
    assert off.score(_inference(model, [0.0])).thumbnails == []


def test_a_learning_camera_gets_its_plain_frame_once_per_interval_and_a_bad_frame_only_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from monitor.config import ThumbnailSettings
    from monitor.frames import MAX_PIXELS, parse_record
    from monitor.wire import MAX_FRAME_BYTES

    scene = np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (60, 1))
    scene[20:40, 30:50] = 255
    payload = cv2.imencode(".jpg", scene)[1].tobytes()

    def frame(camera: str, index: int, value: bytes = payload) -> Any:
        return parse_record(record(camera, index, value), MAX_FRAME_BYTES)

    metrics = ServiceMetrics()
    thumbnails = ThumbnailSettings(interval_seconds=0.3, max_side=64)
    cameras = Cameras(PerCameraSettings.model_validate({}), metrics, ServiceStats(), thumbnails)
    (thumbnail,) = cameras.learning_thumbnails([frame("new-cam", 5)], MAX_PIXELS)
    assert thumbnail.learning and (thumbnail.camera_id, thumbnail.frame_index) == ("new-cam", 5)
    assert (thumbnail.score, thumbnail.anomalous, thumbnail.regions) == (None, False, [])
    image = cv2.imdecode(np.frombuffer(thumbnail.image.image_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (43, 64)  # the frame itself, downsized: no heatmap, no boxes
    expected = cv2.resize(scene, (64, 43), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - expected).mean() < 6
    assert cameras.learning_thumbnails([frame("new-cam", 6)], MAX_PIXELS) == []  # within the interval

    broken = payload[: len(payload) // 2]
    with caplog.at_level(logging.WARNING, logger="monitor.cameras"):
        assert cameras.learning_thumbnails([frame("broken", 0, broken)], MAX_PIXELS) == []
        time.sleep(0.35)
        again = cameras.learning_thumbnails([frame("broken", 1, broken), frame("new-cam", 7)], MAX_PIXELS)
    assert [(t.camera_id, t.frame_index) for t in again] == [("new-cam", 7)]
    warnings = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "no thumbnail" in warnings[0], warnings
    assert metrics.thumbnail_seconds._value.get() > 0
    off = Cameras(
        PerCameraSettings.model_validate({}), metrics, ServiceStats(), ThumbnailSettings(enabled=False)
    )
    assert off.learning_thumbnails([frame("new-cam", 8)], MAX_PIXELS) == []
