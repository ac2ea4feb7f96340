"""ServiceMetrics' zero-initialized series and the HTTP endpoint, over a real socket."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from monitor.metrics import HealthServer, ServiceMetrics
from monitor.wire import Reason


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_dead_letter_reasons_are_exported_at_zero_from_the_start() -> None:
    samples = _samples(ServiceMetrics())
    for reason in Reason:
        assert samples[("anomon_dead_letters_total", (("reason", reason.value),))] == 0.0


def test_a_tracked_camera_has_its_counters_and_threshold() -> None:
    metrics = ServiceMetrics()
    assert not any(labels for (name, labels) in _samples(metrics) if name == "anomon_alerts_total")
    metrics.track_camera("gate-1", 0.65)
    samples = _samples(metrics)
    camera = (("camera", "gate-1"),)
    assert samples[("anomon_alerts_total", camera)] == 0.0
    assert samples[("anomon_alerts_active", camera)] == 0.0
    assert samples[("anomon_alert_threshold", camera)] == 0.65
    assert samples[("anomon_frames_dropped_total", (("camera", "gate-1"), ("reason", "stale")))] == 0.0
    for reason in ("first", "gap"):
        labels = (("camera", "gate-1"), ("reason", reason))
        assert samples[("anomon_frames_without_motion_total", labels)] == 0.0


def _status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_server_answers_metrics_health_and_readiness() -> None:
    metrics = ServiceMetrics()
    ready = {"now": False}
    server = HealthServer(metrics, lambda: ready["now"], "127.0.0.1", 0).start()
    try:
        base = "http://{}:{}".format(*server.address)
        status, body = _status(f"{base}/metrics")
        assert status == 200 and "anomon_dead_letters_total" in body
        assert _status(f"{base}/healthz")[0] == 200
        assert _status(f"{base}/readyz") == (503, '{"status": "not ready"}')
        ready["now"] = True
        assert _status(f"{base}/readyz") == (200, '{"status": "ready"}')
        assert _status(f"{base}/nothing")[0] == 404
    finally:
        server.stop()
