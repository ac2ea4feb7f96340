"""Publishing: outputs reach the real broker before offsets are committed past them."""

from __future__ import annotations

from datetime import UTC, datetime

from kafka.structs import OffsetAndMetadata, TopicPartition

from monitor import wire
from monitor.frames import FrameError
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.publishing import Publisher, offsets_after
from monitor.wire import HEADER_ERROR, Reason, Topics
from tests.monitor.conftest import RecordReader, TopicFactory
from tests.monitor.parts import record


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


def test_scores_and_dead_letters_are_on_their_topics_after_a_flush(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topics = Topics(
        frames=new_topic(1, ".frames"),
        scores=new_topic(1, ".scores"),
        alerts=new_topic(1, ".alerts"),
        dead_letters=new_topic(1, ".dlq"),
    )
    metrics, stats = ServiceMetrics(), ServiceStats()
    publisher = Publisher(make_producer(kafka_settings), topics, metrics, stats, flush_timeout_s=10)
    try:
        publisher.scores([_score("cam", 0), _score("cam", 1)], [0.0, 0.0])
        bad = record(index=7, value=b"junk")
        publisher.dead_letter(bad, FrameError(Reason.UNDECODABLE, "not an image"))
        publisher.flush()
    finally:
        publisher.close()
    scores = [wire.ScoreMessage.model_validate_json(r.value) for r in read_records(topics.scores, 2)]
    assert [(s.camera_id, s.frame_index) for s in scores] == [("cam", 0), ("cam", 1)]
    (letter,) = read_records(topics.dead_letters, 1)
    assert letter.value == b"junk" and dict(letter.headers)[HEADER_ERROR] == b"undecodable"
    assert stats.dead_letters == 1
    assert metrics.end_to_end_seconds._sum.get() > 0  # observed once flushed
