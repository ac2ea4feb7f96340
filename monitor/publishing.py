"""Publishing: outputs to Kafka, flushed before the offsets that produced them are committed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from monitor import wire
from monitor.frames import ConsumedRecord, FrameError, dead_letter
from monitor.kafka_client import ConfluentProducer
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.webhooks import AlertWebhooks

log = logging.getLogger(__name__)


def offsets_after(records: Iterable[ConsumedRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once `records` are done: the next after the last of each partition."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in offsets or offsets[tp].offset <= r.offset:
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    return offsets


class Publisher:
    """Sends scores, alert events and dead letters; `flush` waits for all of them or raises.

    Alert events go on to the webhooks only once a flush saw them acknowledged: an event whose
    publish failed is redone after the rewind (or lost with it), on Kafka and webhooks alike.

    Args:
        producer: the Kafka producer.
        topics: the output topic names.
        metrics: where dead letters, publish errors and end-to-end latency are counted.
        stats: the run's totals.
        flush_timeout_s: how long a flush may wait for acknowledgements.
        webhooks: where acknowledged alert events are handed on; none by default.
    """

    def __init__(
        self,
        producer: KafkaProducer | ConfluentProducer,
        topics: wire.Topics,
        metrics: ServiceMetrics,
        stats: ServiceStats,
        flush_timeout_s: float,
        webhooks: AlertWebhooks | None = None,
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.metrics = metrics
        self.stats = stats
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[Any] = []  # send futures since the last flush
        self._captures: list[float] = []  # capture times of the scores since, observed once flushed
        self.webhooks = webhooks
        self._alerts: list[wire.AlertMessage] = []  # alert events since, handed to the webhooks once flushed

    def scores(self, messages: list[wire.ScoreMessage], captures: list[float]) -> None:
        for message in messages:
            self._send(self.topics.scores, message.camera_id, wire.encode(message))
        self._captures.extend(captures)

    def thumbnails(self, messages: list[wire.ThumbnailMessage]) -> None:
        for message in messages:
            self._send(self.topics.thumbnails, message.camera_id, wire.encode(message))

    def alerts(self, messages: list[wire.AlertMessage]) -> None:
        for message in messages:
            self._send(self.topics.alerts, message.camera_id, wire.encode(message))
        self._alerts.extend(messages)

    def dead_letter(self, consumed: ConsumedRecord, error: FrameError) -> None:
        letter = dead_letter(consumed, error)
        self._pending.append(
            self.producer.send(
                self.topics.dead_letters,
                key=letter.key,
                value=letter.value,
                headers=letter.headers,
                timestamp_ms=letter.timestamp_ms,
            )
        )
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(error.reason.value).inc()
        log.info("dead letter %s/%s/%s: %s", consumed.topic, consumed.partition, consumed.offset, error)

    def _send(self, topic: str, key: str, value: bytes) -> None:
        self._pending.append(self.producer.send(topic, key=key.encode(), value=value, headers=[]))

    def flush(self) -> None:
        """Wait until every output since the last flush is acknowledged.

        Raises:
            KafkaError: one was not (its input offsets must not be committed).
        """
        # Bounded: with the brokers gone, an unbounded flush would hang the service (and /readyz) for minutes.
        self.producer.flush(timeout=self.flush_timeout_s)
        failed = [f for f in self._pending if f.failed()]
        self._pending.clear()
        alerts, self._alerts = self._alerts, []
        if failed:
            self.metrics.publish_errors.inc()
            raise KafkaError(f"{len(failed)} output records were not acknowledged: {failed[0].exception}")
        now = time.time()
        for capture in self._captures:
            self.metrics.end_to_end_seconds.observe(max(0.0, now - capture))
        self._captures.clear()
        if alerts and self.webhooks is not None:
            self.webhooks.deliver(alerts)

    def discard(self) -> None:
        """Forget what was sent since the last flush (it is redone after a rewind)."""
        self._pending.clear()
        self._captures.clear()
        self._alerts.clear()

    def close(self) -> None:
        self.producer.close()
