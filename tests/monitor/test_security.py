"""Security: Kafka over TLS end to end (stunnel in front of the broker), and secrets kept out of output.

The embedded broker's own TLS flags do not work in this build, so stunnel terminates TLS in front of
it and the broker advertises stunnel's port: every client connection after bootstrap is TLS.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from kafka.errors import KafkaError

from model.runtime import open_runtime
from monitor.broker import EmbeddedBroker, free_port
from monitor.cli import main
from monitor.config import load_service_config
from monitor.ingest import FramePublisher, encode_jpeg
from monitor.kafka_client import (
    KafkaSettings,
    KafkaUnavailableError,
    create_topics,
    make_consumer,
    make_producer,
)
from monitor.metrics import HealthServer, ServiceMetrics
from monitor.service import MonitorService

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL or "openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class TlsBroker:
    """A broker reachable only over TLS at `bootstrap`, with the CA that signed its certificate."""

    bootstrap: str
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the server certificate


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if STUNNEL is None or OPENSSL is None:
        pytest.skip("needs stunnel4 and openssl (Debian: apt-get install stunnel4 openssl)")
    pki = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=anomon test {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=pki,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=pki,
    )  # fmt: skip
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=pki,
    )  # fmt: skip
    tls_port, broker_port = free_port(), free_port()
    conf = pki / "stunnel.conf"
    conf.write_text(
        f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\n"
        f"connect = 127.0.0.1:{broker_port}\ncert = {pki / 'server.pem'}\nkey = {pki / 'server.key'}\n"
    )
    stunnel = subprocess.Popen(
        [STUNNEL, str(conf)], stdout=(pki / "stunnel.log").open("wb"), stderr=subprocess.STDOUT
    )
    broker = EmbeddedBroker(port=broker_port, advertised_port=tls_port, log_path=pki / "tansu.log")
    try:
        broker.start()
        yield TlsBroker(f"127.0.0.1:{tls_port}", pki / "ca.pem", pki / "other-ca.pem")
    finally:
        broker.stop()
        stunnel.terminate()
        stunnel.wait(10)


def test_frames_scores_and_dead_letters_go_over_tls_with_the_ca_verified(
    tls_broker: TlsBroker, tiny_checkpoint: Path
) -> None:
    tls = KafkaSettings(
        bootstrap_servers=tls_broker.bootstrap, security_protocol="SSL", ssl_cafile=tls_broker.ca_file
    )
    frames = "tls.frames"
    cfg = load_service_config(
        overrides={
            "kafka": tls.model_dump(mode="json", exclude_none=True),
            "intake.mode": "replay",
            "consumer.group_id": "tls.group",
            "topics.frames": frames,
            "topics.scores": "tls.scores",
            "topics.alerts": "tls.alerts",
            "topics.dead_letters": "tls.dlq",
        },
        environ={},
    )
    assert cfg.kafka.security_protocol == "SSL" and cfg.kafka.ssl_cafile == tls_broker.ca_file
    create_topics(tls, {frames: 2, "tls.scores": 1, "tls.alerts": 1, "tls.dlq": 1})
    publisher = FramePublisher(make_producer(tls), frames)
    rng = np.random.default_rng(0)
    for index in range(20):
        image = rng.integers(0, 255, (48, 64), dtype=np.uint8)
        publisher.send("tls-1", encode_jpeg(image), "image/jpeg", index, time.time_ns())
    publisher.producer.send(
        frames, key=b"tls-1", value=b"not an image", headers=[("content-type", b"image/jpeg")]
    )
    publisher.flush()
    publisher.producer.close()

    service = MonitorService(cfg, open_runtime(tiny_checkpoint, "torch", device="cpu", threads=1))
    service.connect()
    deadline = time.monotonic() + 60
    while service.stats.processed + service.stats.dead_letters < 21:
        assert time.monotonic() < deadline, f"timed out over TLS: {service.stats}"
        service.cycle()
    service.shutdown()
    assert service.stats.processed == 20 and service.stats.dead_letters == 1

    reader = make_consumer(tls, [], None)
    try:
        from kafka import TopicPartition

        got: dict[str, list[bytes]] = {}
        for topic in ("tls.scores", "tls.dlq"):
            tp = TopicPartition(topic, 0)
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            values: list[bytes] = []
            deadline = time.monotonic() + 15
            while len(values) < {"tls.scores": 20, "tls.dlq": 1}[topic] and time.monotonic() < deadline:
                for batch in reader.poll(timeout_ms=200).values():
                    values += [r.value for r in batch]
            got[topic] = values
    finally:
        reader.close()
    assert sorted(json.loads(v)["frame_index"] for v in got["tls.scores"]) == list(range(20))
    assert got["tls.dlq"] == [b"not an image"]


@pytest.mark.parametrize("trust", ["other-ca", "plaintext"])
def test_a_client_that_does_not_trust_the_ca_or_skips_tls_gets_nothing(
    tls_broker: TlsBroker, trust: str
) -> None:
    settings = (
        KafkaSettings(
            bootstrap_servers=tls_broker.bootstrap,
            security_protocol="SSL",
            ssl_cafile=tls_broker.other_ca_file,
            connect_timeout_ms=3000,
        )
        if trust == "other-ca"
        else KafkaSettings(bootstrap_servers=tls_broker.bootstrap, connect_timeout_ms=3000)
    )
    with pytest.raises((KafkaUnavailableError, KafkaError)):
        create_topics(settings, {"tls.refused": 1})


SECRET = "s3cr3t-Pa55word-that-must-not-leak"


def test_the_sasl_password_never_reaches_logs_errors_or_metrics(
    tmp_path: Path,
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "anomon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": f"127.0.0.1:{free_port()}",  # nothing listens there
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_plain_username": "anomon",
                    "sasl_plain_password_file": str(secret_file),
                    "connect_timeout_ms": 1000,
                    "startup_wait_seconds": 0,  # fail at once instead of waiting for Kafka
                },
                "model": {"artifact": str(tiny_checkpoint), "backend": "torch", "device": "cpu"},
                "http": {"port": 0},
            }
        )
    )
    cfg = load_service_config(config, environ={})
    # The setting reaches the client, and nothing that prints the settings shows it.
    assert cfg.kafka.client_kwargs()["sasl_plain_password"] == SECRET
    assert cfg.kafka.client_kwargs()["sasl_mechanism"] == "SCRAM-SHA-512"
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and SECRET not in cfg.model_dump_json()

    caplog.set_level(logging.DEBUG)
    code = main(["run", "--config", str(config)])
    out = capsys.readouterr()
    assert code == 2 and "cannot reach Kafka" in out.err
    for text in (out.out, out.err, caplog.text):
        assert SECRET not in text

    # /metrics of a service holding these settings.
    service = MonitorService(cfg, open_runtime(tiny_checkpoint, "torch", device="cpu", threads=1))
    server = HealthServer(service.metrics, service.ready, "127.0.0.1", 0).start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            assert SECRET.encode() not in response.read()
    finally:
        server.stop()


def test_the_http_endpoint_binds_where_configured_and_serves_no_frames() -> None:
    server = HealthServer(ServiceMetrics(), lambda: True, "127.0.0.1", 0).start()
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        for path in ("/snapshot", "/frames", "/snapshot.jpg", "/../etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5)
            assert refused.value.code == 404
    finally:
        server.stop()
    assert load_service_config(environ={}).http.host == "127.0.0.1", "loopback unless told otherwise"
