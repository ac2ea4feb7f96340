"""The console's Kafka consumer: the scores, alerts and thumbnails topics into the store, in the
console's own consumer group (so it sees the output of every `anomon run` instance).

A record that is too large, not an anomon message, or a message of another topic's kind is skipped
and counted (`anomon_console_records_skipped_total`); nothing on the topics stops the feed. Offsets
are committed after the store has the records.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from uuid import UUID

from kafka.errors import KafkaError

from monitor import wire
from monitor.console.feedback import FeedbackPublisher
from monitor.console.live import LiveUpdates
from monitor.console.metrics import ConsoleMetrics
from monitor.console.store import Changes, ConsoleStore
from monitor.kafka_client import ConsumerSettings, KafkaSettings, make_consumer

log = logging.getLogger(__name__)

POLL_MS = 200
CAMERA_EVENT_SECONDS = 1.0  # a camera's tile is refreshed at most this often (a state change: at once)
STATE_CHECK_SECONDS = 2.0  # cameras going stale change state without a record: checked this often
PRUNE_SECONDS = 60.0
FEEDBACK_RETRY_SECONDS = 10.0
RECONNECT_SECONDS = (1.0, 2.0, 5.0, 10.0)

Message = wire.ScoreMessage | wire.AlertMessage | wire.ThumbnailMessage


class ConsoleFeed:
    """Runs the consumer in a thread: poll, decode, store, commit, announce."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: wire.Topics,
        store: ConsoleStore,
        live: LiveUpdates,
        metrics: ConsoleMetrics,
        feedback: FeedbackPublisher,
        group_id: str = "anomon-console",
        max_record_bytes: int = 1024 * 1024,
        retention_days: float = 30.0,
    ) -> None:
        self.kafka = kafka
        self.store = store
        self.live = live
        self.metrics = metrics
        self.feedback = feedback
        self.group_id = group_id
        self.max_record_bytes = max_record_bytes
        self.retention_days = retention_days
        self.kinds: dict[str, type[Message]] = {
            topics.scores: wire.ScoreMessage,
            topics.alerts: wire.AlertMessage,
            topics.thumbnails: wire.ThumbnailMessage,
        }
        self.stop_requested = threading.Event()
        self._ready = threading.Event()
        self._consumer: Any = None
        self._thread = threading.Thread(target=self._run, name="console-feed", daemon=True)
        self._announced: dict[str, tuple[float, str]] = {}  # camera -> (monotonic time, state) last sent
        self._owed: set[str] = set()  # cameras changed since their last event
        self._warned: set[tuple[str, str]] = set()
        self._timers = {"state": 0.0, "prune": 0.0, "feedback": 0.0}

    @property
    def ready(self) -> bool:
        """True while the consumer has its partitions."""
        return self._ready.is_set()

    def start(self) -> ConsoleFeed:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    # --- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self.stop_requested.is_set():
            try:
                if self._consumer is None:
                    self._connect()
                self.step()
                failures = 0
            except Exception as err:  # the console outlives Kafka outages and its own bugs
                log.warning("console feed: %s: %s; retrying", err.__class__.__name__, err)
                self._disconnect()
                self.stop_requested.wait(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
                failures += 1
        self._disconnect()

    def _connect(self) -> None:
        tuning = ConsumerSettings(
            group_id=self.group_id,
            auto_offset_reset="earliest",
            max_poll_records=500,
            max_partition_fetch_bytes=max(self.max_record_bytes, 1024 * 1024) + 64 * 1024,
            fetch_max_wait_ms=100,
        )
        self._consumer = make_consumer(self.kafka, list(self.kinds), tuning)

    def _disconnect(self) -> None:
        self._ready.clear()
        self.metrics.consumer_ready.set(0)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as err:  # closing a broken consumer may fail too; it is dropped either way
                log.debug("closing the consumer: %s", err)

    def step(self) -> None:
        """One poll: records into the store, offsets committed, changes announced; then the timers."""
        polled = self._consumer.poll(timeout_ms=POLL_MS)
        assigned = bool(self._consumer.assignment())
        if assigned != self._ready.is_set():
            (self._ready.set if assigned else self._ready.clear)()
            self.metrics.consumer_ready.set(int(assigned))
        records = [r for batch in polled.values() for r in batch]
        if records:
            changes = self._store(records)
            try:
                self._consumer.commit()
            except KafkaError as err:  # a rebalance: the records come again, and storing is idempotent
                log.info("console feed: commit failed (%s); records may be read again", err)
            self._announce(changes)
        self._tick()

    def _store(self, records: list[Any]) -> Changes:
        messages = [m for m in (self._decode(r) for r in records) if m is not None]
        if not messages:
            return Changes()
        try:
            return self.store.apply(messages)
        except Exception as err:  # find the one the store refuses, keep the rest
            log.warning("console store refused a batch (%s); storing one by one", err)
        changes = Changes()
        for message in messages:
            try:
                one = self.store.apply([message])
            except Exception as err:
                self._skip(_topic_of(message, self.kinds), "failed", str(err))
                continue
            changes.cameras |= one.cameras
            changes.thumbnails |= one.thumbnails
            changes.alerts |= one.alerts
        return changes

    def _decode(self, record: Any) -> Message | None:
        topic = record.topic
        self.metrics.records.labels(topic).inc()
        value = record.value
        if value is not None and len(value) > self.max_record_bytes:
            self._skip(
                topic, "oversized", f"{len(value)} bytes, over --max-record-bytes {self.max_record_bytes}"
            )
            return None
        try:
            message = wire.decode(value or b"")
        except wire.WireError as err:
            self._skip(topic, "malformed", str(err))
            return None
        expected = self.kinds[topic]
        if not isinstance(message, expected):
            self._skip(topic, "wrong-schema", f"{message.schema_} on the topic of {expected.__name__}")
            return None
        return message

    def _skip(self, topic: str, reason: str, detail: str) -> None:
        self.metrics.skipped.labels(topic, reason).inc()
        level = logging.DEBUG if (topic, reason) in self._warned else logging.WARNING
        self._warned.add((topic, reason))
        log.log(level, "console feed: skipped a record of %s (%s): %s", topic, reason, detail[:200])

    # --- live updates and housekeeping ---------------------------------------------------------------

    def _announce(self, changes: Changes) -> None:
        for alert_id in sorted(changes.alerts):
            alert = self.store.alert(UUID(alert_id))
            if alert is not None:
                self.live.publish("alert", alert.model_dump_json())
        self._owed |= changes.cameras
        now = time.monotonic()
        for camera_id in sorted(self._owed):
            last = self._announced.get(camera_id)
            due = last is None or camera_id in changes.thumbnails or now - last[0] >= CAMERA_EVENT_SECONDS
            view = self.store.camera(camera_id)
            if view is not None and (due or last is None or view.state != last[1]):
                self._owed.discard(camera_id)
                self._announced[camera_id] = (now, view.state)
                self.live.publish("camera", view.model_dump_json())
            elif view is None:
                self._owed.discard(camera_id)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._owed:
            self._announce(Changes())
        if now - self._timers["state"] >= STATE_CHECK_SECONDS:
            self._timers["state"] = now
            for view in self.store.cameras():
                last = self._announced.get(view.camera_id)
                if last is not None and last[1] != view.state:
                    self._announced[view.camera_id] = (now, view.state)
                    self.live.publish("camera", view.model_dump_json())
        if now - self._timers["prune"] >= PRUNE_SECONDS:
            self._timers["prune"] = now
            self.store.prune(self.retention_days)
        if now - self._timers["feedback"] >= FEEDBACK_RETRY_SECONDS:
            self._timers["feedback"] = now
            self.feedback.send_pending()


def _topic_of(message: Message, kinds: dict[str, type[Message]]) -> str:
    return next(topic for topic, kind in kinds.items() if isinstance(message, kind))
