"""End to end: a webhook failure in anomon's metrics -> real Prometheus with deploy/'s rules fires
AnomonWebhookFailing -> real Alertmanager with deploy/'s routing -> the pager receiver gets it."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import wire
from monitor.broker import free_port
from monitor.metrics import HealthServer, ServiceMetrics
from monitor.webhooks import AlertWebhooks, WebhookSettings
from tests.monitor.prometheus import PROMETHEUS, LoopbackServer, PrometheusServer
from tests.monitor.receiver import Receiver

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTMANAGER = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")

pytestmark = [
    pytest.mark.skipif(
        ALERTMANAGER is None,
        reason="alertmanager not on PATH: apt-get install prometheus-alertmanager (.ci/run does)",
    ),
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not on PATH: apt-get install prometheus (.ci/run does)"
    ),
]


class AlertmanagerServer(LoopbackServer):
    """deploy/'s Alertmanager config on loopback, its receivers pointed at `receiver_url`/<receiver>
    and its grouping waits cut to a second (the routes, matchers and inhibitions stay as shipped)."""

    def __init__(self, workdir: Path, receiver_url: str) -> None:
        config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
        config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
        for receiver in config["receivers"]:
            for hook in receiver["webhook_configs"]:
                hook["url"] = f"{receiver_url}/{receiver['name']}"
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.log = workdir / "alertmanager.log"
        self.storage = workdir / "alertmanager"

    def command(self) -> list[str]:
        assert ALERTMANAGER is not None
        return [
            ALERTMANAGER,
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # no gossip port: one instance
            "--log.level=warn",
        ]


def _alert() -> wire.AlertMessage:
    now = datetime.now(UTC)
    model = wire.ModelInfo(
        name="anomem", version="t", backend="onnxruntime", precision="fp32", sha256="ab" * 32
    )
    return wire.AlertMessage(
        type="start",
        alert_id=uuid.uuid4(),
        camera_id="gate-1",
        start_ts=now,
        frames=1,
        peak=wire.AlertPeak(score=0.9, frame_index=0, ts=now),
        model=model,
    )


def _notifications(receiver: Receiver, path: str, alertname: str) -> list[dict[str, Any]]:
    """The alerts named `alertname` in the notifications Alertmanager POSTed to `path`."""
    return [
        alert
        for request in receiver.requests
        if request.path == path
        for alert in json.loads(request.body)["alerts"]
        if alert["labels"]["alertname"] == alertname
    ]


def test_a_failing_webhook_pages_through_prometheus_and_alertmanager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANOMON_TEST_WEBHOOK_SECRET", "test-webhook-secret-0123456789abcdef")
    metrics = ServiceMetrics()
    with Receiver(default=500) as broken, Receiver() as paged:
        settings = WebhookSettings.model_validate(
            {
                "endpoints": [
                    {
                        "name": "pager-hook",
                        "url": broken.url,
                        "secret_env": "ANOMON_TEST_WEBHOOK_SECRET",
                        "max_retries": 0,
                    }
                ]
            }
        )
        webhooks = AlertWebhooks(settings, metrics)
        webhooks.start()
        http = HealthServer(metrics, lambda: True, "127.0.0.1", 0).start()
        host, port = http.address
        try:
            with (
                AlertmanagerServer(tmp_path, paged.url) as alertmanager,
                PrometheusServer(tmp_path, f"{host}:{port}", alertmanager.address) as prometheus,
            ):
                failed = 'anomon_webhook_deliveries_total{endpoint="pager-hook", outcome="failed"}'
                _wait(lambda: prometheus.value(failed) == 0, 30, "a first scrape with no failure yet")
                webhooks.deliver([_alert()])
                broken.wait_for(1)
                _wait(lambda: prometheus.value(failed) == 1, 30, "Prometheus to scrape the failure")
                _wait(
                    lambda: bool(_notifications(paged, "/pager", "AnomonWebhookFailing")),
                    30,
                    "Alertmanager to page",
                )
        finally:
            http.stop()
            webhooks.close()
    (alert,) = _notifications(paged, "/pager", "AnomonWebhookFailing")
    assert alert["status"] == "firing"
    assert alert["labels"] | {"instance": "-"} == {
        "alertname": "AnomonWebhookFailing",
        "severity": "critical",
        "endpoint": "pager-hook",
        "instance": "-",
    }
    assert alert["labels"]["instance"] == f"{host}:{port}"
    assert alert["annotations"]["summary"].startswith(f"webhook pager-hook on {host}:{port} lost ")
    assert not _notifications(paged, "/operators", "AnomonWebhookFailing"), "critical goes to the pager only"


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
