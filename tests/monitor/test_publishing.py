"""Publishing: outputs reach the real broker before offsets are committed past them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from monitor import wire
from monitor.frames import FrameError, dead_letter
from monitor.kafka_client import KafkaSettings, ProducerSettings, make_producer
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.publishing import Publisher, offsets_after
from monitor.wire import HEADER_ERROR, Reason, Topics
from tests.monitor.conftest import RecordReader, TopicFactory
from tests.monitor.parts import record


def test_a_flush_with_records_still_unacknowledged_raises(kafka_settings: KafkaSettings) -> None:
    # confluent-kafka's flush returns what is left; the service counts on an error, as kafka-python's.
    producer = make_producer(kafka_settings, ProducerSettings(client="confluent-kafka"))
    producer.send("anomon.test.unacknowledged", key=b"cam", value=b"x" * 1000)
    with pytest.raises(KafkaTimeoutError, match="not acknowledged"):
        producer.flush(timeout=0)
    producer.close()


def test_offsets_after_are_one_past_the_last_record_of_each_partition() -> None:
    records = [record(offset=5, partition=0), record(offset=3, partition=1), record(offset=9, partition=0)]
    assert offsets_after(records) == {
        TopicPartition("anomon.frames", 0): OffsetAndMetadata(10, "", -1),
        TopicPartition("anomon.frames", 1): OffsetAndMetadata(4, "", -1),
    }


def _score(camera: str, index: int) -> wire.ScoreMessage:
    now = datetime.now(UTC)
    return wire.ScoreMessage(
        camera_id=camera,
        frame_index=index,
        capture_ts=now,
        processed_ts=now,
        score=0.2,
        raw_score=1.0,
        anomalous=False,
        model=wire.ModelInfo(
            name="anomem", version="t", backend="onnxruntime", precision="fp32", sha256="ab" * 32
        ),
        latency_ms=wire.Latency(queue=1.0, inference=1.0, end_to_end=2.0),
    )


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_scores_and_dead_letters_are_on_their_topics_after_a_flush(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader, client: str
) -> None:
    topics = Topics(
        frames=new_topic(1, ".frames"),
        scores=new_topic(1, ".scores"),
        alerts=new_topic(1, ".alerts"),
        dead_letters=new_topic(1, ".dlq"),
    )
    metrics, stats = ServiceMetrics(), ServiceStats()
    producer = make_producer(kafka_settings, ProducerSettings(client=client))
    publisher = Publisher(producer, topics, metrics, stats, flush_timeout_s=10)
    sent = [_score("cam", 0), _score("cam", 1)]
    bad = record(index=7, value=b"junk")
    error = FrameError(Reason.UNDECODABLE, "not an image")
    try:
        publisher.scores(sent, [0.0, 0.0])
        publisher.dead_letter(bad, error)
        publisher.flush()
    finally:
        publisher.close()
    # Either client: the records are the bytes the wire module encodes, keyed by camera.
    scores = read_records(topics.scores, 2)
    assert [(r.key, r.value) for r in scores] == [(b"cam", wire.encode(m)) for m in sent]
    (letter,) = read_records(topics.dead_letters, 1)
    expected = dead_letter(bad, error)
    assert (letter.key, letter.value, letter.timestamp) == (expected.key, b"junk", bad.timestamp)
    assert letter.headers == expected.headers and dict(letter.headers)[HEADER_ERROR] == b"undecodable"
    assert stats.dead_letters == 1
    assert metrics.end_to_end_seconds._sum.get() > 0  # observed once flushed
