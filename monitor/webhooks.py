"""Alert webhooks: each alert event the alerts topic acknowledged, POSTed as JSON to HTTP endpoints.

Every endpoint has its own thread and a bounded queue, so a slow or dead receiver never holds up
scoring: `AlertWebhooks.deliver` only appends to the queues (a full queue drops its oldest event,
counted). The body is the event's record on the alerts topic (`anomon.alert/1`, the snapshot left
out unless the endpoint asks for it). Each request is signed with HMAC-SHA256 over
`<timestamp>.<body>` (headers `X-Anomon-Timestamp`, `X-Anomon-Signature: sha256=<hex>`), so a
receiver can refuse forged and replayed requests; a failed attempt (connection error, timeout,
HTTP 5xx, 408, 429) is retried with exponential backoff, a 3xx/4xx answer is not.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from monitor import wire
from monitor.metrics import ServiceMetrics

log = logging.getLogger(__name__)

HEADER_SIGNATURE = "X-Anomon-Signature"
HEADER_TIMESTAMP = "X-Anomon-Timestamp"
HEADER_EVENT = "X-Anomon-Event"
HEADER_DELIVERY = "X-Anomon-Delivery"
USER_AGENT = "anomon-webhook/1"
MIN_SECRET_CHARS = 16
RETRYABLE_STATUS = frozenset({408, 425, 429})  # and every 5xx
EventType = Literal["start", "update", "end"]
EVENT_TYPES: tuple[EventType, ...] = ("start", "update", "end")


class WebhookEndpoint(BaseModel):
    """One receiver of alert events.

    The signing secret is read from the environment variable `secret_env` or the file `secret_file`
    (exactly one), never from the configuration itself, and is never printed or logged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="its label in metrics and logs (the URL never appears there: it may hold a token)",
    )
    url: str = Field(description="http:// or https:// URL the events are POSTed to")
    cameras: Literal["all"] | list[str] = Field(
        "all", description="all, or the camera ids whose events this endpoint gets"
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES), min_length=1, description="event types to send"
    )
    secret_env: str | None = Field(None, description="environment variable holding the signing secret")
    secret_file: Path | None = Field(None, description="file holding the signing secret")
    snapshot: bool = Field(False, description="include the base64 snapshot (bodies grow to ~270 kB)")
    timeout_seconds: float = Field(5.0, gt=0, le=120, description="per request")
    max_retries: int = Field(5, ge=0, le=100, description="attempts after the first before giving up")
    backoff_seconds: float = Field(1.0, gt=0, le=3600, description="wait before the first retry; doubles")
    max_backoff_seconds: float = Field(60.0, gt=0, le=3600, description="longest wait between retries")
    queue_size: int = Field(
        1000, ge=1, le=100_000, description="events waiting; when full the oldest is dropped"
    )
    ca_file: Path | None = Field(None, description="CA bundle for an https receiver with a private CA")
    _secret: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("cameras", mode="before")
    @classmethod
    def _all_or_camera_ids(cls, value: Any) -> Any:
        if value == "all":
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("set all, or a list of camera ids such as [gate-1, gate-2]")
        bad = [c for c in value if not isinstance(c, str) or not wire.is_camera_id(c)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a camera id (1 to 128 of A-Za-z0-9._-)")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The value is not echoed back: webhook URLs often carry a token.
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _read_secret(self) -> WebhookEndpoint:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError(
                "give the signing secret as one of secret_env (an environment variable) or secret_file"
            )
        if self.secret_env is not None:
            secret = os.environ.get(self.secret_env, "")
            if not secret:
                raise ValueError(
                    f"the environment variable {self.secret_env} is not set: export the secret there"
                )
        else:
            assert self.secret_file is not None
            try:
                secret = self.secret_file.read_text().rstrip("\r\n")
            except OSError as err:
                raise ValueError(f"cannot read secret_file {self.secret_file}: {err.strerror}") from None
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"the signing secret has {len(secret)} characters; use at least {MIN_SECRET_CHARS} "
                "(e.g. openssl rand -hex 32)"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} is not a file")
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError("max_backoff_seconds must be at least backoff_seconds")
        self._secret = SecretStr(secret)
        return self

    @property
    def secret(self) -> bytes:
        """The signing secret."""
        return self._secret.get_secret_value().encode()

    def wants(self, alert: wire.AlertMessage) -> bool:
        """True when this endpoint takes `alert` (its camera and event type)."""
        return alert.type in self.events and (self.cameras == "all" or alert.camera_id in self.cameras)


class WebhookSettings(BaseModel):
    """Alert webhooks: none by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[WebhookEndpoint] = Field(default_factory=list)
    drain_seconds: float = Field(
        5.0, ge=0, le=300, description="on shutdown, how long queued events may still be delivered"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> WebhookSettings:
        names = [e.name for e in self.endpoints]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"endpoint names must be unique: {', '.join(repeated)} appears more than once")
        return self


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Anomon-Signature` value: `sha256=` + hex HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any 3xx: a signed POST is not replayed elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class _Queued:
    alert: wire.AlertMessage
    handed_off: float  # time.monotonic() when Kafka had acknowledged it
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class _Attempt:
    ok: bool
    retryable: bool = False
    detail: str = ""
    retry_after: float | None = None  # seconds, from a Retry-After header


def _retry_after(value: str | None) -> float | None:
    if value is not None and re.fullmatch(r"[0-9]{1,6}", value.strip()):
        return float(value)
    return None


class WebhookSender:
    """Delivers one endpoint's events in order, on its own thread, from a bounded queue.

    Args:
        endpoint: where and how to deliver.
        metrics: where deliveries, retries, drops and delivery times are counted.
    """

    def __init__(self, endpoint: WebhookEndpoint, metrics: ServiceMetrics) -> None:
        self.endpoint = endpoint
        self._metrics = metrics
        self._queue: deque[_Queued] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._abandon = threading.Event()  # shutdown ran past drain_seconds: stop retrying
        context = ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )
        self._thread = threading.Thread(target=self._run, name=f"anomon-webhook-{endpoint.name}", daemon=True)
        self._dropping = False  # the queue overflowed since the last delivery: logged once
        metrics.track_webhook(endpoint.name)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def put(self, alert: wire.AlertMessage, handed_off: float) -> None:
        """Queue an event (never blocks); a full queue drops its oldest event."""
        name = self.endpoint.name
        with self._ready:
            if self._closing:
                return
            if len(self._queue) >= self.endpoint.queue_size:
                self._queue.popleft()
                self._metrics.webhook_queue_dropped.labels(name).inc()
                if not self._dropping:
                    self._dropping = True
                    log.warning(
                        "webhook %s: queue full (%d events), dropping the oldest: the receiver is down or "
                        "slower than the alerts",
                        name,
                        self.endpoint.queue_size,
                    )
            self._queue.append(_Queued(alert, handed_off))
            self._metrics.webhook_queue_depth.labels(name).set(len(self._queue))
            self._ready.notify()

    def close(self, deadline: float) -> None:
        """Deliver what is queued until time.monotonic() reaches `deadline`, then give up the rest."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        if self._thread.is_alive():
            self._thread.join(self.endpoint.timeout_seconds + 1)
        left = len(self._queue)
        if left:
            log.warning("webhook %s: %d events not delivered before shutdown", self.endpoint.name, left)

    def _run(self) -> None:
        while not self._abandon.is_set():
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                queued = self._queue.popleft()
                self._metrics.webhook_queue_depth.labels(self.endpoint.name).set(len(self._queue))
            try:
                self._deliver(queued)
            except Exception:  # a bug here must not end the thread: later events still go out
                log.exception("webhook %s: delivery failed unexpectedly", self.endpoint.name)
                self._metrics.webhook_deliveries.labels(self.endpoint.name, "failed").inc()

    def _deliver(self, queued: _Queued) -> None:
        endpoint, metrics = self.endpoint, self._metrics
        alert = queued.alert if endpoint.snapshot else queued.alert.model_copy(update={"snapshot": None})
        body = wire.encode(alert)
        attempts = 0
        while True:
            attempts += 1
            result = self._post(body, queued)
            if result.ok:
                metrics.webhook_deliveries.labels(endpoint.name, "delivered").inc()
                metrics.webhook_delivery_seconds.labels(endpoint.name).observe(
                    time.monotonic() - queued.handed_off
                )
                self._dropping = False
                return
            if not result.retryable:
                metrics.webhook_deliveries.labels(endpoint.name, "rejected").inc()
                log.warning(
                    "webhook %s: %s refused alert %s (%s); not retried: check the endpoint's url and secret",
                    endpoint.name,
                    result.detail,
                    alert.alert_id,
                    alert.type,
                )
                return
            if attempts > endpoint.max_retries:
                break
            delay = min(endpoint.max_backoff_seconds, endpoint.backoff_seconds * 2 ** (attempts - 1))
            delay *= random.uniform(0.8, 1.0)  # receivers back from an outage are not hit in lockstep
            if result.retry_after is not None:
                delay = min(endpoint.max_backoff_seconds, max(delay, result.retry_after))
            metrics.webhook_retries.labels(endpoint.name).inc()
            log.debug("webhook %s: %s; retry %d in %.1f s", endpoint.name, result.detail, attempts, delay)
            if self._abandon.wait(delay):
                break
        metrics.webhook_deliveries.labels(endpoint.name, "failed").inc()
        log.warning(
            "webhook %s: gave up on alert %s (%s) after %d attempts: %s",
            endpoint.name,
            alert.alert_id,
            alert.type,
            attempts,
            result.detail,
        )

    def _post(self, body: bytes, queued: _Queued) -> _Attempt:
        timestamp = str(int(time.time()))  # signed anew on each attempt: a late retry is still fresh
        request = urllib.request.Request(
            self.endpoint.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                HEADER_EVENT: queued.alert.type,
                HEADER_DELIVERY: queued.delivery_id,
                HEADER_TIMESTAMP: timestamp,
                HEADER_SIGNATURE: sign(self.endpoint.secret, timestamp, body),
            },
        )
        try:
            with self._opener.open(request, timeout=self.endpoint.timeout_seconds) as response:
                response.read(65536)
            return _Attempt(ok=True)
        except urllib.error.HTTPError as err:
            status = err.code
            retry_after = _retry_after(err.headers.get("Retry-After")) if err.headers else None
            err.close()
            retryable = status >= 500 or status in RETRYABLE_STATUS
            return _Attempt(False, retryable, f"HTTP {status}", retry_after)
        except urllib.error.URLError as err:
            return _Attempt(False, True, f"cannot connect: {err.reason}")
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            return _Attempt(False, True, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


class AlertWebhooks:
    """The configured endpoints' senders; `deliver` hands them acknowledged alert events.

    Args:
        settings: the `webhooks` section.
        metrics: where deliveries, retries, drops and delivery times are counted.
    """

    def __init__(self, settings: WebhookSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.senders = [WebhookSender(endpoint, metrics) for endpoint in settings.endpoints]

    def start(self) -> None:
        """Start the delivery threads (again after a start: nothing)."""
        for sender in self.senders:
            sender.start()

    def deliver(self, alerts: Sequence[wire.AlertMessage]) -> None:
        """Queue each event for the endpoints that take it; returns at once."""
        now = time.monotonic()
        for alert in alerts:
            for sender in self.senders:
                if sender.endpoint.wants(alert):
                    sender.put(alert, now)

    def close(self) -> None:
        """Deliver what is queued for up to `drain_seconds`, then stop the threads."""
        deadline = time.monotonic() + self.settings.drain_seconds
        for sender in self.senders:
            sender.close(deadline)

    def describe(self) -> str:
        """One line for the start-up banner: each endpoint's name and cameras (never its URL)."""
        return ", ".join(
            f"{e.name} ({'all cameras' if e.cameras == 'all' else ', '.join(e.cameras)})"
            for e in self.settings.endpoints
        )
