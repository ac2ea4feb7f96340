"""Kafka for the monitor tests: one embedded Tansu broker per session, or an external Kafka.

Set ANOMON_TEST_BOOTSTRAP=host:port to run against an existing Kafka (e.g. Apache Kafka) instead.
Tests create uniquely named topics, so they never see each other's records.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor.broker import EmbeddedBroker
from monitor.kafka_client import KafkaSettings, create_topics

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
