"""Alert webhooks against a real HTTP receiver: signed bodies, retries, failures and drops counted,
only acknowledged alerts handed on, and a receiver that hangs never holds up the real service."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from model.config import ConfigError
from monitor import wire
from monitor.config import load_service_config
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.publishing import Publisher
from monitor.replay import find_clips, replay
from monitor.webhooks import AlertWebhooks, WebhookEndpoint, WebhookSettings
from tests.monitor.conftest import RecordReader, ServiceThread, ServiceTopics, TopicFactory, service_config
from tests.monitor.parts import jpeg
from tests.monitor.receiver import Received, Receiver

SECRET = "test-webhook-secret-0123456789abcdef"
SECRET_ENV = "ANOMON_TEST_WEBHOOK_SECRET"
MODEL = wire.ModelInfo(name="anomem", version="t", backend="onnxruntime", precision="fp32", sha256="ab" * 32)


@pytest.fixture(autouse=True)
def _secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _alert(camera: str = "gate-1", kind: str = "start", frames: int = 3) -> wire.AlertMessage:
    now = datetime.now(UTC)
    end = kind == "end"
    return wire.AlertMessage.model_validate(
        {
            "type": kind,
            "alert_id": uuid.uuid4(),
            "camera_id": camera,
            "start_ts": now,
            "end_ts": now if end else None,
            "frames": frames,
            "peak": {
                "score": 0.9,
                "frame_index": 7,
                "ts": now,
                "regions": [{"bbox": [1, 2, 30, 40], "score": 0.9}],
            },
            "snapshot": wire.Snapshot.from_image("image/jpeg", jpeg()),
            "model": MODEL,
            "end_reason": "cleared" if end else None,
        }
    )


def _endpoint(url: str, name: str = "ops", **fields: Any) -> WebhookEndpoint:
    return WebhookEndpoint.model_validate(
        {"name": name, "url": url, "secret_env": SECRET_ENV, "backoff_seconds": 0.02, **fields}
    )


def _webhooks(
    *endpoints: WebhookEndpoint, drain_seconds: float = 5.0
) -> tuple[AlertWebhooks, ServiceMetrics]:
    metrics = ServiceMetrics()
    webhooks = AlertWebhooks(WebhookSettings(endpoints=list(endpoints), drain_seconds=drain_seconds), metrics)
    webhooks.start()
    return webhooks, metrics


def _count(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _signed_by(secret: str, request: Received) -> bool:
    """The receiver's check, as docs/operations.md gives it: HMAC-SHA256 of `<timestamp>.<body>`."""
    timestamp = request.headers["x-anomon-timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 60
    return fresh and hmac.compare_digest(f"sha256={expected}", request.headers["x-anomon-signature"])


def _tampered(request: Received) -> Received:
    body = request.body.replace(b'"frames":3', b'"frames":4')
    assert body != request.body
    return Received(request.path, request.headers, body, request.at)


# --- delivery ----------------------------------------------------------------------------------------


def test_an_event_is_posted_signed_as_its_alerts_topic_record_to_the_endpoints_that_take_it() -> None:
    with Receiver() as receiver:
        webhooks, metrics = _webhooks(
            _endpoint(f"{receiver.url}/all"),
            _endpoint(f"{receiver.url}/snapshots", name="snapshots", snapshot=True),
            _endpoint(f"{receiver.url}/gate-2-ends", name="gate-2-ends", cameras=["gate-2"], events=["end"]),
        )
        start, end = _alert("gate-1", "start"), _alert("gate-2", "end")
        webhooks.deliver([start, end])
        requests = receiver.wait_for(5)
        webhooks.close()
    by_path: dict[str, list[Received]] = {}
    for request in requests:
        by_path.setdefault(request.path, []).append(request)
    # Each endpoint in order; the filtered one got only gate-2's end.
    assert {p: [r.headers["x-anomon-event"] for r in rs] for p, rs in by_path.items()} == {
        "/all": ["start", "end"],
        "/snapshots": ["start", "end"],
        "/gate-2-ends": ["end"],
    }
    validator = jsonschema.Draft202012Validator(wire.load_schema("alert"))
    for request in requests:
        assert request.headers["content-type"] == "application/json"
        assert _signed_by(SECRET, request), request.path
        assert not _signed_by("another-secret-0123456789", request)
        assert not _signed_by(SECRET, _tampered(request))
        validator.validate(json.loads(request.body))
        uuid.UUID(request.headers["x-anomon-delivery"])
    # The body is the alerts topic's record; without `snapshot: true`, less the snapshot.
    assert by_path["/snapshots"][0].body == wire.encode(start)
    assert by_path["/all"][0].body == wire.encode(start.model_copy(update={"snapshot": None}))
    assert json.loads(by_path["/all"][1].body)["snapshot"] is None
    assert len(by_path["/all"][0].body) < len(by_path["/snapshots"][0].body) / 2
    for name, delivered in (("ops", 2), ("snapshots", 2), ("gate-2-ends", 1)):
        assert (
            _count(metrics, "anomon_webhook_deliveries_total", endpoint=name, outcome="delivered")
            == delivered
        )
        assert _count(metrics, "anomon_webhook_delivery_seconds_count", endpoint=name) == delivered
        assert _count(metrics, "anomon_webhook_deliveries_total", endpoint=name, outcome="failed") == 0


def test_a_5xx_is_retried_with_backoff_and_the_same_delivery_id_then_delivered() -> None:
    with Receiver(statuses=[500, 503]) as receiver:
        webhooks, metrics = _webhooks(_endpoint(receiver.url, backoff_seconds=0.2))
        webhooks.deliver([_alert()])
        attempts = receiver.wait_for(3)
        _wait(
            lambda: (
                _count(metrics, "anomon_webhook_deliveries_total", endpoint="ops", outcome="delivered") == 1
            ),
            5,
            "the delivery counted",
        )
        webhooks.close()
    assert len({a.headers["x-anomon-delivery"] for a in attempts}) == 1
    assert all(_signed_by(SECRET, a) for a in attempts)
    assert len({a.body for a in attempts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, f"backoff 0.2 s doubling (jitter 0.8-1.0), got {gaps}"
    assert _count(metrics, "anomon_webhook_retries_total", endpoint="ops") == 2
    assert _count(metrics, "anomon_webhook_deliveries_total", endpoint="ops", outcome="failed") == 0
    assert len(receiver.requests) == 3


def test_a_receiver_that_keeps_failing_is_given_up_and_counted_and_the_next_event_still_goes_out() -> None:
    with Receiver(default=500) as failing, Receiver(statuses=[401]) as refusing:
        webhooks, metrics = _webhooks(
            _endpoint(failing.url, name="failing", max_retries=2),
            _endpoint(refusing.url, name="refusing", max_retries=2),
        )
        webhooks.deliver([_alert(frames=1), _alert(frames=2)])
        _wait(
            lambda: (
                _count(metrics, "anomon_webhook_deliveries_total", endpoint="failing", outcome="failed") == 2
            ),
            10,
            "both events given up",
        )
        webhooks.close()
    # 1 + max_retries attempts per event, in order; a 401 is not retried and the next event goes on.
    assert [json.loads(r.body)["frames"] for r in failing.requests] == [1, 1, 1, 2, 2, 2]
    assert _count(metrics, "anomon_webhook_retries_total", endpoint="failing") == 4
    assert [json.loads(r.body)["frames"] for r in refusing.requests] == [1, 2]
    assert _count(metrics, "anomon_webhook_deliveries_total", endpoint="refusing", outcome="rejected") == 1
    assert _count(metrics, "anomon_webhook_deliveries_total", endpoint="refusing", outcome="delivered") == 1


def test_an_unreachable_receiver_is_retried_then_counted_as_failed() -> None:
    with Receiver() as receiver:
        closed = receiver.url  # nothing listens there once the receiver is gone
    webhooks, metrics = _webhooks(_endpoint(closed, max_retries=1, timeout_seconds=1))
    webhooks.deliver([_alert()])
    _wait(
        lambda: _count(metrics, "anomon_webhook_deliveries_total", endpoint="ops", outcome="failed") == 1,
        10,
        "the delivery given up",
    )
    webhooks.close()
    assert _count(metrics, "anomon_webhook_retries_total", endpoint="ops") == 1


def test_a_full_queue_drops_the_oldest_events_and_counts_them() -> None:
    hold = threading.Event()
    with Receiver(hold=hold) as receiver:
        webhooks, metrics = _webhooks(_endpoint(receiver.url, queue_size=2, timeout_seconds=30))
        webhooks.deliver([_alert(frames=1)])
        receiver.wait_for(1)  # the first is in flight, held by the receiver
        webhooks.deliver([_alert(frames=n) for n in (2, 3, 4, 5)])  # returns with the first still held
        assert not hold.is_set() and len(receiver.requests) == 1
        assert _count(metrics, "anomon_webhook_queue_dropped_total", endpoint="ops") == 2
        assert _count(metrics, "anomon_webhook_queue_depth", endpoint="ops") == 2
        hold.set()
        receiver.wait_for(3)
        webhooks.close()
    assert [json.loads(r.body)["frames"] for r in receiver.requests] == [1, 4, 5]


def test_shutdown_delivers_what_is_queued_within_drain_seconds_and_no_longer() -> None:
    with Receiver() as fast:
        webhooks, metrics = _webhooks(_endpoint(fast.url))
        webhooks.deliver([_alert(frames=n) for n in range(1, 6)])
        webhooks.close()  # returns once the queue is empty
        assert [json.loads(r.body)["frames"] for r in fast.requests] == [1, 2, 3, 4, 5]
    with Receiver(default=503) as down:
        webhooks, metrics = _webhooks(
            _endpoint(down.url, backoff_seconds=30, max_retries=10), drain_seconds=0.3
        )
        webhooks.deliver([_alert()])
        down.wait_for(1)
        started = time.monotonic()
        webhooks.close()  # stops retrying at the drain deadline, not after its first 24-30 s backoff
        assert time.monotonic() - started < 10
    assert _count(metrics, "anomon_webhook_deliveries_total", endpoint="ops", outcome="failed") == 1


# --- configuration -----------------------------------------------------------------------------------


def _config(endpoint: dict[str, Any]) -> Any:
    return load_service_config(None, {"webhooks.endpoints": [endpoint]}, environ={})


def test_the_secret_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path: Path) -> None:
    from_env = _config({"name": "ops", "url": "https://hooks.example.com/x", "secret_env": SECRET_ENV})
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET[::-1] + "\n")
    from_file = _config(
        {"name": "ops", "url": "https://hooks.example.com/x", "secret_file": str(secret_file)}
    )
    assert from_env.webhooks.endpoints[0].secret == SECRET.encode()
    assert from_file.webhooks.endpoints[0].secret == SECRET[::-1].encode()
    for cfg in (from_env, from_file):
        shown = [
            repr(cfg),
            str(cfg),
            cfg.model_dump_json(),
            AlertWebhooks(cfg.webhooks, ServiceMetrics()).describe(),
        ]
        assert all(SECRET not in text and SECRET[::-1] not in text for text in shown)
    assert from_env.webhooks.endpoints[0].cameras == "all"
    assert from_env.webhooks.endpoints[0].events == ["start", "update", "end"]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (
            {"url": "https://hooks.example.com/x", "secret_env": "ANOMON_TEST_UNSET_SECRET"},
            r"field 'webhooks\.endpoints\.0': the environment variable ANOMON_TEST_UNSET_SECRET is not set",
        ),
        (
            {"url": "https://hooks.example.com/x"},
            r"field 'webhooks\.endpoints\.0': give the signing secret as one of secret_env .* or secret_file",
        ),
        (
            {"url": "https://hooks.example.com/x", "secret_env": SECRET_ENV, "secret_file": "/etc/hostname"},
            r"give the signing secret as one of secret_env",
        ),
        (
            {"url": "https://hooks.example.com/x", "secret_file": "/nonexistent/secret"},
            r"cannot read secret_file /nonexistent/secret: No such file",
        ),
        (
            {"url": "ftp://hooks.example.com/token-abc", "secret_env": SECRET_ENV},
            r"field 'webhooks\.endpoints\.0\.url': not an http:// or https:// URL with a host$",
        ),
        (
            {"url": "https://hooks.example.com/x", "secret_env": SECRET_ENV, "cameras": ["gate 1"]},
            r"field 'webhooks\.endpoints\.0\.cameras': 'gate 1' is not a camera id",
        ),
        (
            {"url": "https://hooks.example.com/x", "secret_env": SECRET_ENV, "events": ["begin"]},
            r"field 'webhooks\.endpoints\.0\.events\.0'",
        ),
    ],
    ids=["unset-env", "no-secret", "two-secrets", "missing-file", "bad-url", "bad-camera", "bad-event"],
)
def test_a_bad_endpoint_is_refused_in_one_line_naming_the_field(
    endpoint: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _config({"name": "ops", **endpoint})
    assert "\n" not in str(err.value) and "token-abc" not in str(err.value)


def test_a_short_secret_and_repeated_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMON_TEST_SHORT_SECRET", "hunter2")
    with pytest.raises(ConfigError, match=r"the signing secret has 7 characters; use at least 16"):
        _config({"name": "ops", "url": "https://h.example.com/", "secret_env": "ANOMON_TEST_SHORT_SECRET"})
    endpoint = {"name": "ops", "url": "https://h.example.com/", "secret_env": SECRET_ENV}
    with pytest.raises(ConfigError, match=r"field 'webhooks': .*endpoint names must be unique: ops"):
        load_service_config(None, {"webhooks.endpoints": [endpoint, endpoint]}, environ={})


# --- hand-off: only what Kafka acknowledged -----------------------------------------------------------


def test_only_alert_events_acknowledged_by_a_flush_are_handed_to_the_webhooks(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topics = wire.Topics(alerts=new_topic(1, ".alerts"))
    with Receiver() as receiver:
        webhooks, metrics = _webhooks(_endpoint(receiver.url))
        publisher = Publisher(make_producer(kafka_settings), topics, metrics, ServiceStats(), 10, webhooks)
        try:
            rewound, acknowledged = _alert(frames=1), _alert(frames=2)
            publisher.alerts([rewound])
            publisher.discard()  # what a rewind does: these events are redone, not handed on
            publisher.alerts([acknowledged])
            publisher.flush()
            (delivered,) = receiver.wait_for(1)
        finally:
            publisher.close()
            webhooks.close()
    assert json.loads(delivered.body)["alert_id"] == str(acknowledged.alert_id)
    assert len(receiver.requests) == 1  # the queue is in order: a handed-on `rewound` would have come first
    on_kafka = [wire.decode(r.value) for r in read_records(topics.alerts, 2)]
    assert acknowledged in on_kafka


# --- the service: a receiver that hangs does not slow scoring -----------------------------------------


def test_a_receiver_that_hangs_does_not_hold_up_scoring_and_gets_every_acknowledged_event(
    tiny_artifact: Path,
    ped2_like: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: Callable[[int], ServiceTopics],
    read_records: RecordReader,
) -> None:
    topics = service_topics(1)
    hold = threading.Event()
    with Receiver(hold=hold) as receiver:
        cfg = service_config(
            kafka_bootstrap,
            topics,
            tiny_artifact,
            **{
                # Every frame over the threshold: one alert per camera, with updates as the peak rises.
                "cameras.defaults": {
                    "on_threshold": 0.001,
                    "off_threshold": 0.0,
                    "min_frames": 1,
                    "update_interval_seconds": 0.2,
                },
                "webhooks.endpoints": [
                    {"name": "slow", "url": receiver.url, "secret_env": SECRET_ENV, "timeout_seconds": 60}
                ],
            },
        )
        clips = find_clips(ped2_like / "test")
        frames = sum(len(c) for c in clips) * 2
        with ServiceThread(cfg) as running:
            running.start()
            producer = make_producer(kafka_settings)
            try:
                replay(clips, FramePublisher(producer, topics.frames), fps=25, cameras=2, progress=False)
            finally:
                producer.close()
            # Every frame is scored and published while the receiver still holds the first event.
            assert len(read_records(topics.scores, frames, timeout_s=60)) == frames
            (first,) = receiver.wait_for(1)
            assert first.headers["x-anomon-event"] == "start"
            assert not hold.is_set() and len(receiver.requests) == 1
            hold.set()
            running.stop()  # drains: the open alerts' end events go out too, within drain_seconds
        alerts = [wire.decode(r.value) for r in read_records(topics.alerts, 1000, timeout_s=2)]
        delivered = receiver.wait_for(len(alerts))
    assert {"start", "end"} <= {a.type for a in alerts if isinstance(a, wire.AlertMessage)}
    # At least once and in order: the webhook got exactly what the alerts topic got.
    as_sent = [(str(a.alert_id), a.type, a.frames) for a in alerts if isinstance(a, wire.AlertMessage)]
    got = [(b["alert_id"], b["type"], b["frames"]) for b in (json.loads(r.body) for r in delivered)]
    assert got == as_sent
    assert all(_signed_by(SECRET, r) for r in delivered)
