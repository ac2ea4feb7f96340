"""The console process: settings, the parts wired together, uvicorn in front."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from monitor.console.access import Access, check_bind
from monitor.console.app import create_app
from monitor.console.feed import ConsoleFeed
from monitor.console.feedback import FeedbackPublisher
from monitor.console.live import LiveUpdates
from monitor.console.metrics import ConsoleMetrics
from monitor.console.store import ConsoleStore
from monitor.kafka_client import KafkaSettings, ProducerSettings, create_topics, make_producer
from monitor.wire import Topics

log = logging.getLogger(__name__)


class ConsoleSettings(BaseModel):
    """Everything `anomon console` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: Topics = Field(default_factory=Topics)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    db: Path = Path("anomon-console.db")
    group_id: str = Field("anomon-console", min_length=1)
    token: SecretStr | None = None
    stale_after_seconds: float = Field(
        30.0, gt=0, description="a camera with no score or thumbnail this long is stalled"
    )
    retention_days: float = Field(30.0, gt=0, description="alerts older than this are forgotten")
    max_record_bytes: int = Field(1024 * 1024, ge=1024, description="larger records are skipped")


class _Uvicorn(uvicorn.Server):
    """uvicorn that ends the live streams first when it shuts down (else it waits for them)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await asyncio.sleep(0.05)  # let the streams see it
        await super().shutdown(sockets)


class ConsoleServer:
    """The store, the Kafka feed, the feedback producer and the web app of one console.

    `serve()` runs in the calling thread until SIGINT/SIGTERM; `start()`/`stop()` run it in a thread.

    Raises:
        ConfigError: a non-loopback host without a token.
        KafkaUnavailableError: Kafka cannot be reached at start.
        StoreError: the database cannot be opened.
    """

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        token = settings.token.get_secret_value() if settings.token is not None else None
        check_bind(settings.host, token)
        self._socket = _bind(settings.host, settings.port)
        self.store = ConsoleStore(settings.db, settings.stale_after_seconds)
        topics = settings.topics
        self.metrics = ConsoleMetrics((topics.scores, topics.alerts, topics.thumbnails))
        create_topics(
            settings.kafka,
            dict.fromkeys((topics.scores, topics.alerts, topics.thumbnails, topics.feedback), 1),
        )
        self.live = LiveUpdates()
        self.producer = make_producer(settings.kafka, ProducerSettings(max_block_ms=3000, linger_ms=0))
        self.feedback = FeedbackPublisher(self.store, self.producer, topics.feedback, self.metrics)
        self.feed = ConsoleFeed(
            settings.kafka,
            topics,
            self.store,
            self.live,
            self.metrics,
            self.feedback,
            group_id=settings.group_id,
            max_record_bytes=settings.max_record_bytes,
            retention_days=settings.retention_days,
        )
        self.app = create_app(
            self.store,
            self.live,
            self.metrics,
            self.feedback,
            Access(token, settings.host),
            lambda: self.feed.ready,
        )
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = _Uvicorn(config, self.live.close)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve(self) -> None:
        """Run until interrupted (uvicorn handles SIGINT and SIGTERM), then close everything."""
        self.feed.start()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._close()

    def start(self, timeout_s: float = 10.0) -> ConsoleServer:
        self.feed.start()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="console-http", daemon=True
        )
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout_s * 20)):
            if self._server.started:
                break
            deadline.wait(0.05)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the console did not start within {timeout_s} s")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._close()

    def _close(self) -> None:
        self.live.close()
        self.feed.stop()
        self.producer.close(timeout=5)
        self.store.close()
        self._socket.close()

    def __enter__(self) -> ConsoleServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), so the address is known before serving."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
