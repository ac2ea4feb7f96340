"""A real Prometheus scrapes the service during a replay through the real broker, and a supervised
ingest of two cameras; every dashboard panel's query and every alert rule is then evaluated through
Prometheus's HTTP API."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from model.export import export_artifact
from monitor.broker import free_port
from monitor.config import load_service_config
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.metrics import HealthServer, IngestMetrics
from monitor.replay import find_clips, replay
from monitor.service import MonitorService, ServiceStats, serve
from monitor.supervisor import IngestSupervisor
from tests.monitor.conftest import TopicFactory
from tests.monitor.prometheus import PROMETHEUS, PrometheusServer, http_get

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CAMERAS = ("obs-1", "obs-2")
# What Grafana substitutes: the camera variable's values, and a rate window of several scrapes.
VARIABLES = {"$camera": "|".join(CAMERAS), "$__rate_interval": "1m"}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not on PATH: apt-get install prometheus (.ci/run does)"
)


def _panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unsubstituted variable in {expr}"
            yield panel["title"], expr


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_every_dashboard_panel_finds_data_in_prometheus(
    tiny_checkpoint: Path,
    ped2_like: Path,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    artifact = tmp_path / "model"
    export_artifact(tiny_checkpoint, artifact, "fp32")
    frames = new_topic(partitions=2)
    http_port = free_port()
    cfg = load_service_config(
        overrides={
            "kafka.bootstrap_servers": kafka_settings.bootstrap_servers,
            "model.artifact": str(artifact),
            "model.backend": "onnxruntime",
            "model.threads": 1,
            "intake.mode": "replay",
            "http.port": http_port,
            "consumer.group_id": f"{frames}.group",
            "topics.frames": frames,
            "topics.scores": f"{frames}.scores",
            "topics.alerts": f"{frames}.alerts",
            "topics.dead_letters": f"{frames}.dlq",
            # One camera with a low threshold, so the alert panels have an alert to show.
            "cameras.cameras": {CAMERAS[0]: {"on_threshold": 0.02, "off_threshold": 0.01, "min_frames": 1}},
        },
        environ={},
    )
    started = threading.Event()
    holder: dict[str, Any] = {}

    def on_ready(service: MonitorService) -> None:
        holder["service"] = service
        started.set()

    def run_service() -> None:
        holder["stats"] = serve(cfg, max_idle_seconds=None, on_ready=on_ready)

    service_thread = threading.Thread(target=run_service, daemon=True)
    service_thread.start()
    assert started.wait(60), "the service did not start"
    base = f"http://127.0.0.1:{http_port}"
    assert http_get(f"{base}/healthz")[0] == 200

    publisher = FramePublisher(make_producer(kafka_settings), frames)
    clips = find_clips(ped2_like / "test") * 2  # 96 frames per camera: ~10 s of traffic at 10 fps

    # `anomon ingest --cameras` for the ingest panels: one camera streaming, one whose path is missing
    # (restarted, down). Its frames go to a topic of their own, so the service's counts stay exact.
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text(
        yaml.safe_dump(
            {
                "defaults": {"fps": 10},
                "cameras": {
                    CAMERAS[0]: {"source": str(ped2_like / "test" / "01")},
                    CAMERAS[1]: {"source": "nope.mp4"},
                },
            }
        )
    )
    ingest_metrics = IngestMetrics()
    ingest_http = HealthServer(ingest_metrics, lambda: True, "127.0.0.1", 0).start()
    supervisor = IngestSupervisor(
        cameras, publisher.producer, new_topic(), ingest_metrics, lambda _: None, backoff=(0.2, 1.0)
    )
    ingest_stop = threading.Event()
    ingest_thread = threading.Thread(target=supervisor.run, args=(ingest_stop, False), daemon=True)
    ingest_thread.start()
    targets = {"anomon": f"127.0.0.1:{http_port}", "anomon-ingest": ":".join(map(str, ingest_http.address))}
    try:
        with PrometheusServer(tmp_path, targets) as prometheus:
            report = replay(
                clips, publisher, fps=10, cameras=len(CAMERAS), camera_prefix="obs", progress=False
            )
            sent = len(report.sent)
            assert sent == sum(len(c) for c in clips) * len(CAMERAS)
            # A record whose value is not the JPEG it claims: a real dead letter for the dead-letter panel.
            publisher.producer.send(
                frames,
                key=CAMERAS[1].encode(),
                value=b"not a jpeg",
                headers=[("content-type", b"image/jpeg"), ("anomon-schema", b"1")],
            ).get(10)
            _wait(
                lambda: (
                    prometheus.value("sum(anomon_frames_processed_total)") >= sent
                    and prometheus.value("sum(anomon_dead_letters_total)") >= 1
                    and prometheus.value("sum(anomon_ingest_frames_total)") >= 1
                    and prometheus.value("sum(anomon_ingest_source_restarts_total)") >= 1
                ),
                60,
                f"Prometheus to scrape {sent} scored frames and a dead letter",
            )
            assert http_get(f"{base}/readyz")[0] == 200
            assert prometheus.value('up{job="anomon"}') == 1

            cameras = prometheus.api("label/camera/values", **{"match[]": "anomon_frames_processed_total"})
            assert sorted(cameras) == list(CAMERAS)  # the $camera variable's values

            dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "anomon-overview.json").read_text())
            empty = []
            for title, expr in _panel_queries(dashboard):
                values = [float(s["value"][1]) for s in prometheus.query(expr)]
                if not any(math.isfinite(v) for v in values):
                    empty.append(f"{title}: {expr} -> {values}")
            assert not empty, "panels without data:\n" + "\n".join(empty)
            for annotation in dashboard["annotations"]["list"]:  # valid queries (a swap may not happen here)
                prometheus.query(annotation["expr"].replace("$camera", VARIABLES["$camera"]))
            assert (
                prometheus.value(
                    f'anomon_ingest_source_restarts_total{{camera="{CAMERAS[1]}",reason="failed"}}'
                )
                >= 1
            )
            assert prometheus.value(f'anomon_ingest_source_up{{camera="{CAMERAS[1]}"}}') == 0

            assert prometheus.value(f'anomon_alerts_total{{camera="{CAMERAS[0]}"}}') >= 1
            assert prometheus.value('anomon_dead_letters_total{reason="bad-content-type"}') == 1
            assert prometheus.value("sum(rate(anomon_frames_processed_total[1m]))") > 0
            model = prometheus.query("anomon_model_info")[0]["metric"]
            assert (model["model"], model["backend"], model["precision"]) == ("anomem", "onnxruntime", "fp32")
            assert model["camera"] in CAMERAS and len(model["sha256"]) == 64

            groups = prometheus.api("rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == len(
                yaml.safe_load((DEPLOY / "prometheus/rules/anomon.yml").read_text())["groups"][0]["rules"]
            )
            broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
            assert not broken, broken
            firing = {r["name"] for r in rules if r["state"] != "inactive"}
            assert "AnomonServiceDown" not in firing
    finally:
        ingest_stop.set()
        ingest_thread.join(20)
        ingest_http.stop()
        service = holder.get("service")
        if service is not None:
            service.stop_requested.set()
        service_thread.join(30)
        publisher.producer.close(timeout=5)
    stats: ServiceStats = holder["stats"]
    assert stats.processed == sent and stats.dead_letters == 1
