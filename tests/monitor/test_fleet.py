"""The fleet: a model store routes each camera to its own model, swapped live, against the real broker
and real ONNX Runtime sessions."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from monitor.config import ServiceConfig
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.store import ModelStore
from monitor.wire import AlertMessage, ScoreMessage, ThumbnailMessage, decode, load_schema
from tests.monitor.conftest import RecordReader, ServiceThread, ServiceTopics, service_config

TopicsFactory = Any


@pytest.fixture(scope="module")
def tiny_daad_artifact(tiny_daad_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different model: the tiny DAAD checkpoint exported to ONNX."""
    from model.export import export_artifact

    out = tmp_path_factory.mktemp("tiny_daad_onnx")
    export_artifact(tiny_daad_checkpoint, out, "fp32")
    return out


def _frames(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(count):
        img = np.full((60, 90), 90, np.uint8) + rng.integers(0, 8, (60, 90), dtype=np.uint8)
        x = (10 + t) % 70
        img[25:37, x : x + 5] = 170
        out.append(cv2.imencode(".jpg", img)[1].tobytes())
    return out


def _send(settings: KafkaSettings, topic: str, camera: str, frames: list[bytes], first: int = 0) -> None:
    producer = make_producer(settings)
    try:
        publisher = FramePublisher(producer, topic)
        start_ns = time.time_ns()
        for i, payload in enumerate(frames):
            index = first + i
            publisher.send(camera, payload, "image/jpeg", index, start_ns + i * 100_000_000)
        producer.flush()
    finally:
        producer.close()


def _scores(read_records: RecordReader, topic: str, count: int) -> list[ScoreMessage]:
    messages = [decode(r.value) for r in read_records(topic, count, timeout_s=60)]
    return [m for m in messages if isinstance(m, ScoreMessage)]


def _wait(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _serving(running: ServiceThread, camera: str) -> str | None:
    model = running.service.router.model_for(camera)
    return None if model is None else model.info.sha256


def _metric(running: ServiceThread, name: str, **labels: str) -> float:
    value = running.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _config(bootstrap: str, topics: ServiceTopics, store: Path) -> ServiceConfig:
    return service_config(
        bootstrap, topics, None, **{"model.store": str(store), "model.store_poll_seconds": 0.2}
    )


def test_each_camera_is_scored_by_its_own_model_and_a_camera_without_one_is_learning(
    tiny_artifact: Path,
    tiny_daad_artifact: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    gate = store.add(tiny_artifact, "gate")
    yard = store.add(tiny_daad_artifact, "yard")
    assert gate.sha256 != yard.sha256
    topics = service_topics(2)
    broken = [f[: len(f) // 2] for f in _frames(3, 5)]  # half JPEGs: parse, do not decode
    cfg = _config(kafka_bootstrap, topics, store.root)
    with caplog.at_level(logging.WARNING, logger="monitor.cameras"), ServiceThread(cfg) as running:
        running.start().wait_assigned()
        _send(kafka_settings, topics.frames, "gate", _frames(12, 0))
        _send(kafka_settings, topics.frames, "yard", _frames(12, 1))
        _send(kafka_settings, topics.frames, "new-cam", _frames(12, 2))
        _send(kafka_settings, topics.frames, "broken-cam", broken)
        scores = _scores(read_records, topics.scores, 24)
        _wait(lambda: running.service.stats.learning == 15)
        assert _metric(running, "anomon_camera_state", camera="new-cam", state="learning") == 1
        assert _metric(running, "anomon_models_loaded") == 2
        # Past the thumbnail interval (2 s), the learning cameras send again.
        time.sleep(2.2)
        _send(kafka_settings, topics.frames, "new-cam", _frames(12, 3), first=12)
        _send(kafka_settings, topics.frames, "broken-cam", broken, first=3)
        _wait(lambda: running.service.stats.learning == 30)
    by_camera: dict[str, set[str]] = {}
    for s in scores:
        by_camera.setdefault(s.camera_id, set()).add(s.model.sha256)
    assert by_camera == {"gate": {gate.sha256}, "yard": {yard.sha256}}
    assert len(read_records(topics.dead_letters, 1, timeout_s=2)) == 0
    stats = running.service.stats
    assert stats.processed == 24 and stats.dead_letters == 0 and stats.learning == 30
    # The live view's thumbnails: scored ones of the scored cameras (their first frame, then one per
    # 2 s); the plain latest frame of the learning camera, once per 2 s: one a burst. None of frames
    # that do not decode, and one warning for that camera.
    validator = jsonschema.Draft202012Validator(load_schema("thumbnail"))
    thumbnails: list[ThumbnailMessage] = []
    for r in read_records(topics.thumbnails, 5, timeout_s=5):
        validator.validate(json.loads(r.value))
        message = decode(r.value)
        assert isinstance(message, ThumbnailMessage) and r.key == message.camera_id.encode()
        thumbnails.append(message)
    scored = {(t.camera_id, t.model.sha256) for t in thumbnails if t.model is not None}
    assert scored == {("gate", gate.sha256), ("yard", yard.sha256)}
    learning = [t for t in thumbnails if t.learning]
    assert [t.camera_id for t in learning] == ["new-cam", "new-cam"]
    assert learning[0].frame_index < 12 <= learning[1].frame_index
    for t in learning:
        assert t.score is None and not t.anomalous and t.regions == []
        image = cv2.imdecode(np.frombuffer(t.image.image_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (60, 90)  # under thumbnails.max_side: as sent
    warned = [r.getMessage() for r in caplog.records if "broken-cam" in r.getMessage()]
    assert len(warned) == 1 and "no thumbnail" in warned[0], warned


def test_a_new_version_swaps_the_camera_live_without_losing_or_repeating_a_frame(
    tiny_artifact: Path,
    tiny_daad_artifact: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    old = store.add(tiny_artifact, "gate")
    topics = service_topics(1)
    frames = _frames(40, 3)
    with ServiceThread(_config(kafka_bootstrap, topics, store.root)) as running:
        running.start().wait_assigned()
        _send(kafka_settings, topics.frames, "gate", frames[:20])
        _wait(lambda: running.service.stats.processed == 20)
        new = store.add(tiny_daad_artifact, "gate")
        _wait(lambda: _serving(running, "gate") == new.sha256)
        _send(kafka_settings, topics.frames, "gate", frames[20:], first=20)
        _wait(lambda: running.service.stats.processed == 40)
        assert _metric(running, "anomon_model_swaps_total", camera="gate") == 1
        assert (
            _metric(
                running,
                "anomon_model_info",
                camera="gate",
                model="daad",
                version=new.model_version,
                sha256=new.sha256,
                backend="onnxruntime",
                precision="fp32",
            )
            == 1
        )
    scores = _scores(read_records, topics.scores, 40)
    assert sorted(s.frame_index for s in scores) == list(range(40))  # sent = scored, none twice
    assert {s.model.sha256 for s in scores if s.frame_index < 20} == {old.sha256}
    assert {s.model.sha256 for s in scores if s.frame_index >= 20} == {new.sha256}
    stats = running.service.stats
    assert stats.processed + stats.dead_letters + stats.dropped == 40


def test_a_corrupt_artifact_is_refused_counted_and_the_camera_keeps_its_model(
    tiny_artifact: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    good = store.add(tiny_artifact, "gate")
    topics = service_topics(1)
    with ServiceThread(_config(kafka_bootstrap, topics, store.root)) as running:
        running.start().wait_assigned()
        # A version 2 damaged after it was written (a bad copy, a disk fault): its ONNX bytes differ
        # from its entry's hash.
        work = tmp_path / "bad"
        shutil.copytree(good.path, work)
        onnx = work / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
        entry = (work / "entry.json").read_text().replace('"version": 1', '"version": 2')
        (work / "entry.json").write_text(entry)
        work.rename(good.path.parent / "2")
        _wait(lambda: _metric(running, "anomon_model_load_failures_total", camera="gate") == 1)
        _send(kafka_settings, topics.frames, "gate", _frames(10, 4))
        _wait(lambda: running.service.stats.processed == 10)
        time.sleep(0.6)  # further polls do not retry the same bad version
        assert _metric(running, "anomon_model_load_failures_total", camera="gate") == 1
    scores = _scores(read_records, topics.scores, 10)
    assert {s.model.sha256 for s in scores} == {good.sha256}


def test_an_open_alert_ends_as_stalled_when_its_camera_goes_silent(
    tiny_artifact: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> None:
    topics = service_topics(1)
    # Every frame over the threshold: the threshold far below any score.
    cfg = service_config(
        kafka_bootstrap,
        topics,
        tiny_artifact,
        **{
            "cameras.defaults.on_threshold": 0.01,
            "cameras.defaults.off_threshold": 0.005,
            "cameras.defaults.min_frames": 1,
            "cameras.defaults.stall_seconds": 1.0,
            "cameras.defaults.map_threshold": -1e9,
        },
    )
    with ServiceThread(cfg) as running:
        running.start().wait_assigned()
        _send(kafka_settings, topics.frames, "gate", _frames(6, 5))
        _wait(lambda: running.service.stats.processed == 6)
        assert _metric(running, "anomon_alerts_active", camera="gate") == 1
        _wait(lambda: _metric(running, "anomon_camera_state", camera="gate", state="stalled") == 1, 10)
        assert _metric(running, "anomon_alerts_active", camera="gate") == 0
    alerts = [decode(r.value) for r in read_records(topics.alerts, 2, timeout_s=10)]
    assert [(a.type, a.end_reason) for a in alerts if isinstance(a, AlertMessage)][:1] == [("start", None)]
    ends = [a for a in alerts if isinstance(a, AlertMessage) and a.type == "end"]
    assert [a.end_reason for a in ends] == ["stalled"]
