"""The embedded broker, `anomon broker`, and the Kafka client factories, against a real broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from monitor.broker import BrokerError, EmbeddedBroker, free_port, port_in_use
from monitor.cli import main
from monitor.kafka_client import (
    ConsumerSettings,
    KafkaSettings,
    KafkaUnavailableError,
    create_topics,
    make_consumer,
    make_producer,
    wait_for_kafka,
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


def test_anomon_broker_serves_clients_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "broker.log"
    command = [sys.executable, "-m", "monitor.cli", "broker", "--port", str(port), "--log", str(log)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # said once the broker answers
        assert f"anomon broker: Kafka on 127.0.0.1:{port}" in first and "Ctrl-C stops it" in first, first
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        create_topics(settings, {"local": 1})
        producer = make_producer(settings)
        for i in range(3):
            producer.send("local", key=b"cam", value=f"v{i}".encode())
        producer.flush()
        producer.close()
        consumer = make_consumer(settings, ["local"], ConsumerSettings(group_id="local-readers"))
        try:
            assert _poll_until(consumer, 3) == [(b"cam", b"v0"), (b"cam", b"v1"), (b"cam", b"v2")]
        finally:
            consumer.close()
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "anomon broker: stopped" in rest and "Traceback" not in rest
    assert not port_in_use(port), "the broker process outlived the command"
    assert "listening" in log.read_text()


def test_anomon_broker_on_a_port_in_use_is_one_line(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    assert main(["broker", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"anomon broker: error: port {port} on 127.0.0.1 is in use (another broker?); stop it or pick "
        "another port (--port)"
    )


def test_waiting_for_kafka_says_once_what_it_waits_for_and_honours_its_limit() -> None:
    said: list[str] = []
    port = free_port()
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", startup_wait_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(
        KafkaUnavailableError, match=rf"cannot reach Kafka at 127\.0\.0\.1:{port} \(connection refused\)"
    ):
        wait_for_kafka(settings, threading.Event(), said.append, backoff=(0.1, 0.2))
    assert 1.0 <= time.monotonic() - started < 5
    assert said == [
        f"waiting for Kafka at 127.0.0.1:{port} (connection refused); start it (`anomon broker` runs one "
        "locally) or fix the address (--bootstrap, kafka.bootstrap_servers)"
    ]
    stopped = threading.Event()
    stopped.set()
    assert wait_for_kafka(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"), stopped, said.append) is False
