"""The embedded broker and the Kafka client factories, against a real broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from monitor.broker import BrokerError, EmbeddedBroker
from monitor.kafka_client import (
    ConsumerSettings,
    KafkaSettings,
    KafkaUnavailableError,
    create_topics,
    make_consumer,
    make_producer,
)
from tests.monitor.conftest import TopicFactory


def _poll_until(consumer: KafkaConsumer, count: int, timeout_s: float = 20.0) -> list[tuple[bytes, bytes]]:
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend((r.key, r.value) for r in batch)
    return got


def test_group_consumer_round_trip_resumes_from_the_committed_offset(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    topic = new_topic(partitions=3)
    producer = make_producer(kafka_settings)
    sent = [(f"cam-{i % 3}".encode(), f"v{i}".encode()) for i in range(12)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()

    group = ConsumerSettings(group_id=f"g-{topic}")
    consumer = make_consumer(kafka_settings, [topic], group)
    got = _poll_until(consumer, 12)
    assert sorted(got) == sorted(sent)
    # One key stays on one partition, so each camera's records arrive in send order.
    for camera in (b"cam-0", b"cam-1", b"cam-2"):
        assert [v for k, v in got if k == camera] == [v for k, v in sent if k == camera]
    consumer.commit()
    consumer.close()

    producer.send(topic, key=b"cam-0", value=b"after-commit")
    producer.flush()
    producer.close()
    again = make_consumer(kafka_settings, [topic], group)
    try:
        assert _poll_until(again, 1) == [(b"cam-0", b"after-commit")]
    finally:
        again.close()


def test_create_topics_is_idempotent_and_sets_partitions(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    name = new_topic(partitions=4)
    assert create_topics(kafka_settings, {name: 4}) == []
    admin = KafkaAdminClient(**kafka_settings.client_kwargs())
    try:
        [described] = admin.describe_topics([name])
    finally:
        admin.close()
    assert len(described["partitions"]) == 4


def test_a_second_broker_starts_on_its_own_port_logs_and_stops(tmp_path: Path, kafka_bootstrap: str) -> None:
    log = tmp_path / "logs" / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        assert broker.running and broker.bootstrap != kafka_bootstrap
        assert broker.bootstrap.startswith("127.0.0.1:")
        created = create_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), {"t": 2})
        assert created == ["t"]
        process = broker._process
    assert not broker.running and process is not None and process.returncode is not None
    assert "listening" in log.read_text()
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


def test_missing_binary_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrokerError, match="binary not found"):
        EmbeddedBroker(binary=tmp_path / "no-tansu").start()
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-tansu"))
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN"):
        EmbeddedBroker().start()


def test_a_broker_that_exits_at_start_names_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'address in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"exited with code 3.*broker\.log"):
        EmbeddedBroker(port=1, binary=fake, log_path=tmp_path / "broker.log").start()
    assert "address in use" in (tmp_path / "broker.log").read_text()


def test_unreachable_kafka_is_one_line_naming_the_address() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", connect_timeout_ms=300)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match=r"cannot reach Kafka at 127\.0\.0\.1:9 .*--bootstrap"):
        make_producer(settings)
    with pytest.raises(KafkaUnavailableError, match="cannot reach Kafka"):
        create_topics(settings, {"t": 1})
    assert time.monotonic() - started < 10
