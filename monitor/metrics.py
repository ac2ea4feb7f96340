"""Prometheus metrics (prefix `anomon_`) of the service and of ingest, and the HTTP endpoint: /metrics,
/healthz, /readyz.

Each service owns its registry, so several services (or tests) can run in one process.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from monitor.pairing import NO_MOTION_REASONS
from monitor.wire import Reason

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# anomon_webhook_deliveries_total{outcome}: answered 2xx; given up after its retries; refused by a 3xx/4xx
# answer (not retried: the receiver or the endpoint's settings are wrong).
WEBHOOK_OUTCOMES = ("delivered", "failed", "rejected")
# Webhook delivery times include the receiver's answer and any retries' backoff.
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DROP_REASONS = ("stale",)
RESTART_REASONS = ("ended", "failed")  # why ingest opened a camera's source again
CAMERA_STATES = (
    "ok",
    "alert",
    "learning",
    "stalled",
)  # why the service drops frames on purpose (live mode only)


@dataclass
class ServiceStats:
    """Totals of one run (also in the metrics)."""

    consumed: int = 0
    processed: int = 0
    dropped: int = 0
    learning: int = 0  # frames of cameras without a model
    dead_letters: int = 0
    alerts: int = 0
    cycles: int = 0
    partitions: set[int] = field(default_factory=set)


class ServiceMetrics:
    """The service's metrics (DESIGN.md plus what an operator needs to tell saturation and stalls)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_consumed = Counter(
            "anomon_frames_consumed", "Frame records consumed", ["camera"], registry=r
        )
        self.frames_processed = Counter(
            "anomon_frames_processed", "Frames scored and published", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "anomon_frames_dropped",
            "Frames not scored on purpose (e.g. stale in live mode)",
            ["camera", "reason"],
            registry=r,
        )
        self.frames_without_motion = Counter(
            "anomon_frames_without_motion",
            "Frames a motion model scored paired with themselves: no usable previous frame",
            ["camera", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "anomon_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.inference_seconds = Histogram(
            "anomon_inference_seconds", "Model inference time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "anomon_end_to_end_seconds", "Capture to score published", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "anomon_queue_seconds", "Capture to start of inference", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "anomon_batch_size", "Frames per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.anomaly_score = Gauge(
            "anomon_anomaly_score", "Last normalized anomaly score (0.5 = threshold)", ["camera"], registry=r
        )
        self.last_frame_timestamp = Gauge(
            "anomon_last_frame_timestamp_seconds",
            "Capture time of the camera's last scored frame",
            ["camera"],
            registry=r,
        )
        self.alerts = Counter("anomon_alerts", "Alerts started", ["camera"], registry=r)
        self.alerts_active = Gauge("anomon_alerts_active", "Alerts open now", ["camera"], registry=r)
        self.alert_threshold = Gauge(
            "anomon_alert_threshold",
            "The camera's on-threshold on the normalized score (plotted with the score)",
            ["camera"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "anomon_consumer_lag_records", "Records behind the partition's end", ["partition"], registry=r
        )
        self.model_info = Gauge(
            "anomon_model_info",
            "The model that scores each camera (value 1; one series per camera)",
            ["camera", "model", "version", "sha256", "backend", "precision"],
            registry=r,
        )
        self.camera_state = Gauge(
            "anomon_camera_state",
            "Each camera's state (value 1 on its current state): ok, alert, learning (no model yet), "
            "stalled (no frame for its stall time)",
            ["camera", "state"],
            registry=r,
        )
        self.frames_learning = Counter(
            "anomon_frames_learning",
            "Frames of cameras without a model (learning): counted, not scored",
            ["camera"],
            registry=r,
        )
        self.thumbnail_seconds = Counter(
            "anomon_thumbnail_seconds",
            "Time spent making camera thumbnails, decoding learning cameras' frames included "
            "(rate = the share of a core they cost)",
            registry=r,
        )
        self.models_loaded = Gauge("anomon_models_loaded", "Distinct models loaded", registry=r)
        self.model_memory = Gauge(
            "anomon_model_memory_bytes",
            "Resident memory the loaded models added when they were loaded (process RSS growth)",
            registry=r,
        )
        self.model_swaps = Counter(
            "anomon_model_swaps",
            "Times a camera switched to another model while running",
            ["camera"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "anomon_model_load_failures",
            "Store artifacts refused (bad hash, unreadable) or failing to load; the camera keeps its model",
            ["camera"],
            registry=r,
        )
        self.publish_errors = Counter("anomon_publish_errors", "Failed output flushes", registry=r)
        self.webhook_deliveries = Counter(
            "anomon_webhook_deliveries",
            "Alert events sent to a webhook endpoint, by outcome: delivered (2xx), failed (retries "
            "exhausted), rejected (a 3xx/4xx answer, not retried)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.webhook_retries = Counter(
            "anomon_webhook_retries",
            "Webhook attempts that failed and were retried",
            ["endpoint"],
            registry=r,
        )
        self.webhook_queue_dropped = Counter(
            "anomon_webhook_queue_dropped",
            "Alert events dropped unsent because the endpoint's queue was full (the oldest go first)",
            ["endpoint"],
            registry=r,
        )
        self.webhook_queue_depth = Gauge(
            "anomon_webhook_queue_depth", "Alert events waiting for the endpoint", ["endpoint"], registry=r
        )
        self.webhook_delivery_seconds = Histogram(
            "anomon_webhook_delivery_seconds",
            "Alert event acknowledged by Kafka to its webhook answered 2xx (queueing and retries included)",
            ["endpoint"],
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        self.consumer_reconnects = Counter(
            "anomon_consumer_reconnects",
            "Consumers replaced after polls returned nothing while records waited",
            registry=r,
        )
        self.inference_errors = Counter(
            "anomon_inference_errors",
            "Batches whose inference raised or returned non-finite values",
            registry=r,
        )
        self.busy_seconds = Counter(
            "anomon_busy_seconds",
            "Time spent decoding, inferring and publishing (rate = utilization)",
            registry=r,
        )
        self.ready = Gauge(
            "anomon_ready", "1 when the model is loaded and partitions are assigned", registry=r
        )
        # Counters exist from the start at zero, so rate() and alert rules see "none yet", not "no data".
        for reason in Reason:
            self.dead_letters.labels(reason.value)

    def track_camera(self, camera: str, on_threshold: float) -> None:
        """Export a newly seen camera's series at zero and its alert threshold."""
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera, reason)
        for reason in NO_MOTION_REASONS:
            self.frames_without_motion.labels(camera, reason)
        self.alerts.labels(camera)
        self.alerts_active.labels(camera).set(0)
        self.alert_threshold.labels(camera).set(on_threshold)
        self.model_swaps.labels(camera)

    def track_webhook(self, endpoint: str) -> None:
        """Export a webhook endpoint's series at zero (its failing rule then sees "none yet")."""
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(endpoint, outcome)
        self.webhook_retries.labels(endpoint)
        self.webhook_queue_dropped.labels(endpoint)
        self.webhook_queue_depth.labels(endpoint).set(0)

    def set_camera_state(self, camera: str, state: str) -> None:
        """One of CAMERA_STATES at 1, the others at 0."""
        for name in CAMERA_STATES:
            self.camera_state.labels(camera, name).set(1 if name == state else 0)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class IngestMetrics:
    """The metrics of `anomon ingest --cameras` (prefix `anomon_ingest_`), one series per camera."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "anomon_ingest_frames", "Frames published to the frames topic", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "anomon_ingest_frames_dropped",
            "Frames of a live source dropped to keep the camera's fps",
            ["camera"],
            registry=r,
        )
        self.restarts = Counter(
            "anomon_ingest_source_restarts",
            "Sources opened again after they ended (a file at its end, a stream cut) or failed",
            ["camera", "reason"],
            registry=r,
        )
        self.source_up = Gauge(
            "anomon_ingest_source_up",
            "1 while the camera's source is open and publishing",
            ["camera"],
            registry=r,
        )
        self.last_frame = Gauge(
            "anomon_ingest_last_frame_timestamp_seconds",
            "Capture time of the camera's last published frame",
            ["camera"],
            registry=r,
        )
        self.cameras = Gauge("anomon_ingest_cameras", "Cameras in the cameras file", registry=r)

    def track_camera(self, camera: str) -> None:
        """Export a camera's series at zero, so rules see "none yet" rather than no data."""
        self.frames.labels(camera)
        self.frames_dropped.labels(camera)
        for reason in RESTART_REASONS:
            self.restarts.labels(camera, reason)
        self.source_up.labels(camera).set(0)

    def forget_camera(self, camera: str) -> None:
        """Drop a camera's series (it left the cameras file)."""
        for metric in (self.frames, self.frames_dropped, self.source_up, self.last_frame):
            with contextlib.suppress(KeyError):
                metric.remove(camera)
        for reason in RESTART_REASONS:
            with contextlib.suppress(KeyError):
                self.restarts.remove(camera, reason)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class Renders(Protocol):
    """Metrics that render as Prometheus text (ServiceMetrics, IngestMetrics)."""

    def render(self) -> bytes: ...


class HealthServer:
    """/metrics, /healthz (process alive) and /readyz (ready() is true) on one port, in a thread."""

    def __init__(self, metrics: Renders, ready: Callable[[], bool], host: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"alive"}', "application/json")
                elif path == "/readyz":
                    ok = outer.ready()
                    body = json.dumps({"status": "ready" if ok else "not ready"}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.ready = ready
        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:  # a user error: the port is taken or the address is not this machine's
            raise ValueError(
                f"cannot serve metrics on {host}:{port} ({err.strerror or err}); pick another port "
                "(--http-port, http.port) or address"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="anomon-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
