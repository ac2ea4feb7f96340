"""Kafka settings: client kwargs per protocol, secrets, validation, the YAML loader, fetch latency."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from kafka import TopicPartition

from model.config import ConfigError
from monitor.kafka_client import (
    BOOTSTRAP_ENV,
    PASSWORD_ENV,
    ConsumerSettings,
    KafkaSettings,
    KafkaUnavailableError,
    ProducerSettings,
    librdkafka_config,
    load_kafka_settings,
    make_consumer,
    make_producer,
)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_plaintext_kwargs_have_no_security_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    kwargs = KafkaSettings(bootstrap_servers="a:9092, b:9092").client_kwargs()
    assert kwargs["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl_", "ssl_")) for k in kwargs)
    assert KafkaSettings().bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv(BOOTSTRAP_ENV, "kafka:29092")
    assert KafkaSettings().bootstrap_servers == "kafka:29092"


def test_sasl_ssl_kwargs_carry_the_secret_but_nothing_prints_it(ca_file: Path) -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="anomon",
        sasl_plain_password="hunter2-secret",
        ssl_cafile=ca_file,
        ssl_check_hostname=False,
    )
    kwargs = settings.client_kwargs()
    assert kwargs["sasl_plain_password"] == "hunter2-secret"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["ssl_cafile"] == str(ca_file)
    assert kwargs["ssl_check_hostname"] is False
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text


def test_sasl_ssl_settings_in_librdkafka_names(ca_file: Path) -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="anomon",
        sasl_plain_password="hunter2-secret",
        ssl_cafile=ca_file,
        ssl_check_hostname=False,
    )
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "kafka:9093",
        "client.id": "anomon",
        "security.protocol": "sasl_ssl",
        "socket.connection.setup.timeout.ms": 10_000,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "anomon",
        "sasl.password": "hunter2-secret",
        "ssl.ca.location": str(ca_file),
        "ssl.endpoint.identification.algorithm": "none",
    }


def test_a_confluent_producer_without_a_broker_is_one_line_naming_the_address() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", connect_timeout_ms=1000)
    with pytest.raises(KafkaUnavailableError, match=r"cannot reach Kafka at 127\.0\.0\.1:9 .*--bootstrap"):
        make_producer(settings, ProducerSettings(client="confluent-kafka"))


def test_password_comes_from_a_file_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-file\n")
    base = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u"}
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    from_file = KafkaSettings.model_validate({**base, "sasl_plain_password_file": str(secret)})
    assert from_file.client_kwargs()["sasl_plain_password"] == "from-file"
    assert KafkaSettings.model_validate(base).client_kwargs()["sasl_plain_password"] == "from-env"
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        KafkaSettings.model_validate(base)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "is not SASL_"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile .* is not a file"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"sasl_plain_password_file": "/nonexistent/pw"}, "cannot read the password file"),
    ],
)
def test_inconsistent_settings_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSettings.model_validate(fields)


def test_consumer_heartbeat_must_fit_the_session() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        ConsumerSettings(session_timeout_ms=3000, heartbeat_interval_ms=2000)
    assert ConsumerSettings().session_timeout_ms == 6000


def test_yaml_loader_reads_a_kafka_section_and_flags_override_it(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "from-file:9092", "client_id": "cam"}}))
    assert load_kafka_settings(config, bootstrap_servers=None).bootstrap_servers == "from-file:9092"
    settings = load_kafka_settings(config, bootstrap_servers="flag:9092")
    assert settings.bootstrap_servers == "flag:9092" and settings.client_id == "cam"


def test_yaml_loader_errors_are_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "kafka.yaml"
    config.write_text(yaml.safe_dump({"security_protocol": "TLS"}))
    with pytest.raises(ConfigError, match=r"kafka\.yaml: field 'security_protocol'") as caught:
        load_kafka_settings(config)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="not found"):
        load_kafka_settings(tmp_path / "missing.yaml")
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_kafka_settings(config)


def test_a_consumer_gets_records_of_a_live_camera_without_waiting_out_the_fetch(
    kafka_settings: KafkaSettings, new_topic: Callable[..., str]
) -> None:
    # Tansu holds fetches up to their max wait even when records arrive; the default must be short.
    topic = new_topic()
    consumer = make_consumer(kafka_settings, [], ConsumerSettings(group_id=f"g-{topic}"))
    producer = make_producer(kafka_settings, ProducerSettings(linger_ms=0))
    count = 20

    def camera() -> None:  # one record every 100 ms, like a 10 fps camera
        for _ in range(count):
            producer.send(topic, value=repr(time.time()).encode()).get(timeout=10)
            time.sleep(0.1)

    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.poll(timeout_ms=200)
        sender = threading.Thread(target=camera)
        sender.start()
        latencies: list[float] = []
        deadline = time.monotonic() + 20
        while len(latencies) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                now = time.time()
                latencies += [now - float(r.value) for r in batch]
        sender.join()
    finally:
        consumer.close()
        producer.close()
    assert len(latencies) == count
    assert np.median(latencies) < 0.05, f"median {np.median(latencies) * 1e3:.0f} ms from send to poll"
