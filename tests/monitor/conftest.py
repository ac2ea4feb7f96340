"""Kafka for the monitor tests (one embedded Tansu broker per session, or an external Kafka) and the service.

Set ANOMON_TEST_BOOTSTRAP=host:port to run against an existing Kafka (e.g. Apache Kafka) instead.
Tests create uniquely named topics, so they never see each other's records.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor.broker import EmbeddedBroker
from monitor.config import ServiceConfig, load_service_config
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.metrics import HealthServer, ServiceMetrics
from monitor.service import MonitorService, open_models
from monitor.wire import ScoreMessage, decode, load_schema

TopicFactory = Callable[..., str]
RecordReader = Callable[..., list[Any]]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of the test Kafka."""
    external = os.environ.get("ANOMON_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log_path = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap, client_id="anomon-tests")


@pytest.fixture
def new_topic(kafka_settings: KafkaSettings, request: pytest.FixtureRequest) -> TopicFactory:
    """Creates a topic named after the test (plus a random suffix) and returns its name."""

    def create(partitions: int = 1, suffix: str = "") -> str:
        stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
        name = f"test.{stem}{suffix}.{uuid.uuid4().hex[:8]}"
        create_topics(kafka_settings, {name: partitions})
        return name

    return create


@pytest.fixture
def read_records(kafka_bootstrap: str) -> RecordReader:
    """Reads `count` records of every partition of a topic from the start (no group, no commits)."""

    def read(topic: str, count: int, timeout_s: float = 15.0) -> list[Any]:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            records: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()

    return read


# --- the service under test -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to an fp32 ONNX artifact (what `anomon run` serves)."""
    from model.export import export_artifact

    out = tmp_path_factory.mktemp("tiny_onnx")
    export_artifact(tiny_checkpoint, out, "fp32")
    return out


@dataclass(frozen=True)
class ServiceTopics:
    """The unique topics of one test's service."""

    frames: str
    scores: str
    alerts: str
    dead_letters: str
    thumbnails: str

    def config(self) -> dict[str, str]:
        return {f"topics.{name}": value for name, value in asdict(self).items()}


@pytest.fixture
def service_topics(new_topic: TopicFactory) -> Callable[[int], ServiceTopics]:
    """Creates a frames topic with N partitions and the three output topics."""

    def create(partitions: int = 1) -> ServiceTopics:
        return ServiceTopics(
            frames=new_topic(partitions, ".frames"),
            scores=new_topic(1, ".scores"),
            alerts=new_topic(1, ".alerts"),
            dead_letters=new_topic(1, ".dlq"),
            thumbnails=new_topic(1, ".thumbnails"),
        )

    return create


def service_config(
    bootstrap: str, topics: ServiceTopics, artifact: Path | None, **overrides: Any
) -> ServiceConfig:
    """A replay-mode config for tests: unique group, fast polling, dotted `overrides` on top (without
    `artifact`, give `model.store`)."""
    base: dict[str, Any] = {
        "kafka.bootstrap_servers": bootstrap,
        "consumer.group_id": f"test-{uuid.uuid4().hex[:8]}",
        "model.artifact": str(artifact) if artifact is not None else None,
        "model.backend": "onnxruntime",
        "model.threads": 1,
        "intake.mode": "replay",
        "batching.max_wait_ms": 5,
        "http.port": 0,
        **topics.config(),
    }
    return load_service_config(None, {**base, **overrides}, environ={})


class ServiceThread:
    """A MonitorService with its HTTP endpoint, run in a thread (what `serve` does, minus signals).

    The endpoint answers from construction on; `start()` connects and runs the service, `stop()`
    drains it; leaving the `with` block stops both.
    """

    def __init__(self, cfg: ServiceConfig, max_idle_seconds: float | None = None) -> None:
        metrics = ServiceMetrics()
        self.service = MonitorService(cfg, open_models(cfg, metrics), metrics)
        self.http = HealthServer(self.service.metrics, self.service.ready, "127.0.0.1", 0).start()
        self.max_idle_seconds = max_idle_seconds
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="service-under-test", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.http.address
        return f"http://{host}:{port}"

    def _run(self) -> None:
        try:
            self.service.run(self.max_idle_seconds)
        except BaseException as err:  # re-raised by stop(), so a failing service fails its test
            self.error = err

    def start(self) -> ServiceThread:
        self.service.connect()
        self._thread.start()
        return self

    def wait_assigned(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.service.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.service.ready(), f"no partitions assigned within {timeout_s} s"

    def stop(self, timeout_s: float = 20.0) -> None:
        """Request a stop (the service drains), wait for it and re-raise what the service raised."""
        self.service.stop_requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), "the service did not stop"
        if self.error is not None:
            raise self.error

    def __enter__(self) -> ServiceThread:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.http.stop()


def send_records(
    settings: KafkaSettings, topic: str, records: Iterable[tuple[bytes, bytes, list[tuple[Any, bytes]]]]
) -> None:
    """Send raw (key, value, headers) records, as a misbehaving producer would, and wait for them."""
    producer = make_producer(settings)
    try:
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close()


def decode_scores(records: list[Any]) -> list[ScoreMessage]:
    """Score messages of consumed records, each checked against the shipped JSON Schema first."""
    validator = jsonschema.Draft202012Validator(
        load_schema("score"), format_checker=jsonschema.FormatChecker()
    )
    scores = []
    for record in records:
        validator.validate(json.loads(record.value))
        message = decode(record.value)
        assert isinstance(message, ScoreMessage) and record.key == message.camera_id.encode()
        scores.append(message)
    return scores
