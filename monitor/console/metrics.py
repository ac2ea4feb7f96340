"""The console's own Prometheus metrics (prefix `anomon_console_`), served at its /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from monitor.wire import Verdict

SKIP_REASONS = ("oversized", "malformed", "wrong-schema", "failed")
"""Why a record of an output topic was skipped: larger than --max-record-bytes, not a valid anomon
message, a valid message of another topic's kind, or the store refused it."""
VERDICTS: tuple[Verdict, ...] = ("acknowledged", "false_alarm", "real")


class ConsoleMetrics:
    """Records read and skipped per topic, feedback given and published, live clients."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "anomon_console_records", "Records read from the output topics", ["topic"], registry=r
        )
        self.skipped = Counter(
            "anomon_console_records_skipped",
            "Records skipped: oversized, malformed, of the wrong schema, or refused by the store",
            ["topic", "reason"],
            registry=r,
        )
        self.feedback = Counter("anomon_console_feedback", "Operator verdicts given", ["verdict"], registry=r)
        self.feedback_unpublished = Gauge(
            "anomon_console_feedback_unpublished",
            "Verdicts stored but not yet acknowledged by the feedback topic (retried)",
            registry=r,
        )
        self.live_clients = Gauge(
            "anomon_console_live_clients", "Browsers connected for live updates", registry=r
        )
        self.consumer_ready = Gauge(
            "anomon_console_consumer_ready", "1 while the consumer has its partitions", registry=r
        )
        for topic in topics:
            self.records.labels(topic)
            for reason in SKIP_REASONS:
                self.skipped.labels(topic, reason)
        for verdict in VERDICTS:
            self.feedback.labels(verdict)

    def render(self) -> bytes:
        return generate_latest(self.registry)
