"""Operator feedback: kept in the store first, then published to the feedback topic (keyed by camera);
what Kafka did not acknowledge is sent again later, so a verdict given during an outage is not lost."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from kafka.errors import KafkaError

from monitor import wire
from monitor.console.metrics import ConsoleMetrics
from monitor.console.store import ConsoleStore

log = logging.getLogger(__name__)
SEND_TIMEOUT_SECONDS = 5.0


class FeedbackPublisher:
    """Stores verdicts and publishes them as `wire.FeedbackMessage` records."""

    def __init__(self, store: ConsoleStore, producer: Any, topic: str, metrics: ConsoleMetrics) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self._sending = threading.Lock()  # one sender at a time, so a retry never sends a record twice

    def give(self, alert_id: UUID, verdict: wire.Verdict, note: str = "") -> wire.FeedbackMessage | None:
        """Record a verdict on a known alert and try to publish it; None when the alert is unknown."""
        alert = self.store.alert(alert_id)
        if alert is None:
            return None
        message = wire.FeedbackMessage(
            alert_id=alert.alert_id,
            camera_id=alert.camera_id,
            verdict=verdict,
            ts=datetime.now(UTC),
            alert_start_ts=alert.start_ts,
            alert_end_ts=alert.end_ts,
            model=alert.model,
            note=note,
        )
        self.store.add_feedback(message)
        self.metrics.feedback.labels(verdict).inc()
        self.send_pending()
        return message

    def send_pending(self) -> int:
        """Publish every stored verdict not yet acknowledged, oldest first; returns how many are left."""
        with self._sending:
            pending = self.store.unpublished()
            for item in pending:
                try:
                    future = self.producer.send(self.topic, key=item.camera_id.encode(), value=item.message)
                    future.get(timeout=SEND_TIMEOUT_SECONDS)
                except KafkaError as err:
                    log.warning("feedback not published yet (%s); retried later", err.__class__.__name__)
                    break
                self.store.mark_published(item.id)
            left = len(self.store.unpublished())
            self.metrics.feedback_unpublished.set(left)
            return left
