"""A console against the test Kafka: unique topics, a fresh database, message builders, plain HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from monitor import wire
from monitor.console.server import ConsoleServer, ConsoleSettings
from monitor.kafka_client import KafkaSettings, make_producer
from tests.monitor.conftest import TopicFactory

MODEL = wire.ModelInfo(
    name="anomem", version="test-1", backend="onnxruntime", precision="fp32", sha256="a" * 64
)
T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def console_topics(new_topic: TopicFactory) -> wire.Topics:
    """Unique scores, alerts, thumbnails and feedback topics."""
    return wire.Topics(
        scores=new_topic(1, ".scores"),
        alerts=new_topic(1, ".alerts"),
        thumbnails=new_topic(1, ".thumbnails"),
        feedback=new_topic(1, ".feedback"),
    )


ConsoleFactory = Callable[..., ConsoleServer]


@pytest.fixture
def start_console(
    kafka_settings: KafkaSettings, console_topics: wire.Topics, tmp_path: Path
) -> Iterator[ConsoleFactory]:
    """start_console(**settings): a running console on a free loopback port, its consumer assigned;
    stopped after the test. The database is tmp_path/console.db unless `db` is given."""
    started: list[ConsoleServer] = []

    def start(**overrides: Any) -> ConsoleServer:
        values: dict[str, Any] = {
            "kafka": kafka_settings,
            "topics": console_topics,
            "port": 0,
            "db": tmp_path / "console.db",
            "group_id": f"console-{uuid.uuid4().hex[:8]}",
            **overrides,
        }
        console = ConsoleServer(ConsoleSettings(**values)).start()
        started.append(console)
        assert console.feed.wait_ready(30), "the console's consumer got no partitions within 30 s"
        return console

    yield start
    for console in started:
        console.stop()


def publish(
    settings: KafkaSettings, topic: str, values: Sequence[bytes | None], key: bytes = b"cam-1"
) -> None:
    """Send raw record values and wait for them."""
    producer = make_producer(settings)
    try:
        for value in values:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def jpeg(width: int = 160, height: int = 120, level: int = 90) -> bytes:
    image = np.full((height, width, 3), level, np.uint8)
    cv2.rectangle(image, (width // 4, height // 4), (width // 2, height // 2), (0, 0, 255), 2)
    return cv2.imencode(".jpg", image)[1].tobytes()


def score(
    camera: str, index: int, value: float, at: datetime = T0, model: wire.ModelInfo = MODEL
) -> wire.ScoreMessage:
    ts = at + timedelta(milliseconds=100 * index)
    return wire.ScoreMessage(
        camera_id=camera,
        frame_index=index,
        capture_ts=ts,
        processed_ts=ts,
        score=value,
        raw_score=value * 2,
        anomalous=value >= 0.5,
        model=model,
        latency_ms=wire.Latency(queue=1.0, inference=2.0, end_to_end=5.0),
    )


def alert(
    camera: str,
    alert_id: uuid.UUID,
    kind: str = "start",
    peak: float = 0.8,
    frames: int = 3,
    start: datetime = T0,
    end: datetime | None = None,
    reason: str | None = None,
    snapshot: bytes | None = None,
    model: wire.ModelInfo = MODEL,
) -> wire.AlertMessage:
    return wire.AlertMessage.model_validate(
        {
            "type": kind,
            "alert_id": alert_id,
            "camera_id": camera,
            "start_ts": start,
            "end_ts": end,
            "end_reason": reason,
            "frames": frames,
            "peak": {
                "score": peak,
                "frame_index": frames,
                "ts": start + timedelta(milliseconds=100 * frames),
                "regions": [{"bbox": [10, 20, 60, 80], "score": peak}],
            },
            "snapshot": None if snapshot is None else wire.Snapshot.from_image("image/jpeg", snapshot),
            "model": model,
        }
    )


def thumbnail(
    camera: str, index: int, at: datetime = T0, model: wire.ModelInfo = MODEL
) -> wire.ThumbnailMessage:
    return wire.ThumbnailMessage(
        camera_id=camera,
        frame_index=index,
        capture_ts=at,
        score=0.3,
        anomalous=False,
        model=model,
        image=wire.Snapshot.from_image("image/jpeg", jpeg()),
    )


def learning_thumbnail(
    camera: str, index: int, at: datetime = T0, image: bytes | None = None
) -> wire.ThumbnailMessage:
    """A thumbnail of a camera the service has no model for: the plain frame, no score."""
    return wire.ThumbnailMessage(
        camera_id=camera,
        frame_index=index,
        capture_ts=at,
        score=None,
        anomalous=False,
        model=None,
        image=wire.Snapshot.from_image("image/jpeg", jpeg(level=140) if image is None else image),
    )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Http:
    """A plain HTTP client with a cookie jar that does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirects
        )

    def request(
        self, path: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self._opener.open(req, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "the condition") -> Any:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")
