"""The service against the real broker and ONNX Runtime: scores, alerts, dead letters, scale-out, health."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from model.export import export_artifact
from model.runtime import Availability
from monitor.config import ModelSettings
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.replay import ReplayReport, find_clips, replay
from monitor.service import ModelPlan, plan_model
from monitor.wire import HEADER_ERROR, HEADER_SOURCE, AlertMessage, decode, frame_headers
from tests.conftest import PED2, PED2_CHECKPOINTS
from tests.monitor.conftest import (
    RecordReader,
    ServiceThread,
    ServiceTopics,
    decode_scores,
    send_records,
    service_config,
)

TopicsFactory = Callable[[int], ServiceTopics]


def _replay(
    kafka_settings: KafkaSettings,
    topic: str,
    data: Path,
    clips: list[str],
    fps: float = 1000.0,
    cameras: int = 1,
    prefix: str = "cam",
) -> ReplayReport:
    producer = make_producer(kafka_settings)
    try:
        publisher = FramePublisher(producer, topic)
        return replay(
            find_clips(data, clips), publisher, fps=fps, cameras=cameras, camera_prefix=prefix, progress=False
        )
    finally:
        producer.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _offset(source: str) -> int:
    """The offset of an `anomon-source` header (topic/partition/offset)."""
    return int(source.rsplit("/", 1)[1])


def _box_hits_mask(bbox: list[int], mask: np.ndarray) -> bool:
    x1, y1, x2, y2 = bbox
    return bool(mask[y1 : y2 + 1, x1 : x2 + 1].any())


@pytest.fixture(scope="module", params=PED2_CHECKPOINTS, ids=lambda p: p.stem)
def ped2_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each committed Ped2 checkpoint (AnoMem, DAAD) exported to fp32 ONNX."""
    if not (PED2 / "labels.json").is_file():
        pytest.skip(f"UCSD Ped2 is not at {PED2}")
    out = tmp_path_factory.mktemp("ped2_onnx") / request.param.stem
    export_artifact(request.param, out, "fp32")
    return out


def test_a_ped2_clip_is_scored_once_per_frame_in_order_and_alerts_on_the_anomaly(
    ped2_artifact: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> None:
    clip = "01"
    labels = json.loads((PED2 / "labels.json").read_text())[clip]
    anomalous = [i for i, label in enumerate(labels) if label]
    topics = service_topics(2)
    cfg = service_config(kafka_bootstrap, topics, ped2_artifact, **{"batching.max_batch": 8})
    with ServiceThread(cfg) as running:
        running.start()
        # 100 fps: capture times 10 ms apart, so alert timestamps map back to frames unambiguously.
        report = _replay(kafka_settings, topics.frames, PED2, [clip], fps=100, prefix="ped2")
        records = read_records(topics.scores, len(labels), timeout_s=120)
        running.stop()  # drains: an alert still open at the clip's end gets its `end` event
    assert len(report.sent) == len(labels) == 180
    scores = decode_scores(records)
    assert [s.frame_index for s in scores] == list(range(len(labels)))
    assert {s.camera_id for s in scores} == {"ped2-1"}
    assert len(read_records(topics.scores, len(labels) + 1, timeout_s=1)) == len(labels), (
        "a frame scored twice"
    )

    frame_of = {s.capture_ts: s.frame_index for s in scores}
    alerts = [decode(r.value) for r in read_records(topics.alerts, 2, timeout_s=5)]
    alerts += [decode(r.value) for r in read_records(topics.alerts, 1000, timeout_s=1)[len(alerts) :]]
    assert all(isinstance(a, AlertMessage) for a in alerts)
    starts = [a for a in alerts if isinstance(a, AlertMessage) and a.type == "start"]
    ends = {a.alert_id: a for a in alerts if isinstance(a, AlertMessage) and a.type == "end"}
    assert starts, "no alert on a clip that is two-thirds anomalous"
    for start in starts:
        end = ends[start.alert_id]  # every alert is closed, at the latest by the drain
        assert end.end_ts is not None
        first, last = frame_of[start.start_ts], frame_of.get(end.end_ts, len(labels) - 1)
        assert first <= anomalous[-1] and last >= anomalous[0], (
            f"alert {first}..{last} misses {anomalous[0]}.."
        )
        peak = end.peak
        assert labels[peak.frame_index] == 1
        mask = cv2.imread(str(PED2 / "masks" / clip / f"{peak.frame_index:03d}.png"), cv2.IMREAD_GRAYSCALE)
        assert peak.regions and any(_box_hits_mask(r.bbox, mask) for r in peak.regions)

    # Boxes are in source pixels and mostly on the labelled anomaly.
    boxed = [s for s in scores if s.anomalous and s.regions and labels[s.frame_index]]
    hits = 0
    for s in boxed:
        mask = cv2.imread(str(PED2 / "masks" / clip / f"{s.frame_index:03d}.png"), cv2.IMREAD_GRAYSCALE)
        assert all(r.bbox[2] < mask.shape[1] and r.bbox[3] < mask.shape[0] for r in s.regions)
        hits += any(_box_hits_mask(r.bbox, mask) for r in s.regions)
    assert boxed and hits / len(boxed) >= 0.5, f"{hits} of {len(boxed)} anomalous frames boxed on the mask"


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_bad_records_go_to_the_dead_letter_topic_and_scoring_goes_on(
    tiny_artifact: Path,
    ped2_like: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
    client: str,
) -> None:
    topics = service_topics(1)
    overrides = {"intake.max_frame_bytes": 8192, "producer.client": client}
    cfg = service_config(kafka_bootstrap, topics, tiny_artifact, **overrides)
    good = [p.read_bytes() for p in sorted((ped2_like / "test" / "01").glob("*.jpg"))[:12]]
    assert max(len(g) for g in good) < 8192
    jpeg, ts = "image/jpeg", 1_700_000_000_000_000_000
    bad: list[tuple[bytes, bytes, list[tuple[str, bytes]], str]] = [
        (b"cam", good[0][:40] + b"\x00" * 400, frame_headers(jpeg, 100, ts), "undecodable"),
        (b"cam", b"", frame_headers(jpeg, 101, ts), "empty"),
        (b"cam", good[0] + b"\x00" * 9000, frame_headers(jpeg, 102, ts), "oversized"),
        (b"cam", good[0], frame_headers("image/gif", 103, ts), "bad-content-type"),
        (b"bad key!", good[0], frame_headers(jpeg, 104, ts), "bad-key"),
    ]
    with ServiceThread(cfg) as running:
        running.start().wait_assigned()
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        try:
            publisher = FramePublisher(producer, topics.frames)
            for i in range(6):
                publisher.send("cam", good[i], jpeg, i, ts + i)
            for key, value, headers, _ in bad:
                producer.send(topics.frames, key=key, value=value, headers=headers)
            for i in range(6, 12):
                publisher.send("cam", good[i], jpeg, i, ts + i)
            publisher.flush()
        finally:
            producer.close()
        scores = decode_scores(read_records(topics.scores, 12))
        letters = read_records(topics.dead_letters, len(bad))
        status, text = _get(f"{running.url}/metrics")
    assert [s.frame_index for s in scores] == list(range(12)), "frames after the bad ones were not scored"
    assert len(letters) == len(bad)
    # Parse errors are dead-lettered before decode errors of the same cycle: match letters by reason.
    by_reason = {dict(letter.headers)[HEADER_ERROR].decode(): letter for letter in letters}
    assert set(by_reason) == {reason for *_, reason in bad}
    for key, value, _, reason in bad:
        letter = by_reason[reason]
        assert (letter.key, letter.value) == (key, value)
        source = dict(letter.headers)[HEADER_SOURCE].decode()
        assert source.startswith(f"{topics.frames}/0/") and 6 <= _offset(source) < 11
    assert status == 200
    counted = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "anomon_dead_letters"
        for sample in family.samples
        if sample.name == "anomon_dead_letters_total"
    }
    # Every reason is exported from the start (0 until it happens); each bad record counted once.
    assert {r: v for r, v in counted.items() if v} == {reason: 1.0 for *_, reason in bad}
    assert set(counted) >= {reason for *_, reason in bad}
    assert running.service.stats.dead_letters == len(bad) and running.service.stats.processed == 12


def test_two_instances_in_one_group_split_the_cameras(
    tiny_artifact: Path,
    ped2_like: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> None:
    partitions = 4
    topics = service_topics(partitions)
    # Camera ids whose keys land on every partition under the producers' default (murmur2) partitioner.
    by_partition: dict[int, str] = {}
    for n in range(1, 100):
        by_partition.setdefault((murmur2(f"cam-{n}".encode()) & 0x7FFFFFFF) % partitions, f"cam-{n}")
    cameras = [by_partition[p] for p in range(partitions)]
    cfg = service_config(kafka_bootstrap, topics, tiny_artifact)
    with ServiceThread(cfg) as first, ServiceThread(cfg) as second:
        first.start()
        second.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a, b = first.service.assigned, second.service.assigned
            if a and b and not a & b and len(a | b) == partitions:
                break
            time.sleep(0.05)
        assert first.service.assigned and second.service.assigned, "the group did not split the partitions"
        producer = make_producer(kafka_settings)
        try:
            publisher = FramePublisher(producer, topics.frames)
            frames = [p.read_bytes() for p in sorted((ped2_like / "test" / "01").glob("*.jpg"))]
            for i, frame in enumerate(frames):
                for camera in cameras:
                    publisher.send(camera, frame, "image/jpeg", i, time.time_ns())
            publisher.flush()
        finally:
            producer.close()
        scores = decode_scores(read_records(topics.scores, len(frames) * len(cameras)))
    for camera in cameras:
        assert [s.frame_index for s in scores if s.camera_id == camera] == list(range(len(frames)))
    done_first, done_second = first.service.stats, second.service.stats
    assert done_first.processed > 0 and done_second.processed > 0, "one instance published nothing"
    assert done_first.processed + done_second.processed == len(frames) * len(cameras)
    assert not done_first.partitions & done_second.partitions
    assert done_first.partitions | done_second.partitions == set(range(partitions))


def test_health_and_readiness_follow_the_service(
    tiny_artifact: Path, kafka_bootstrap: str, service_topics: TopicsFactory
) -> None:
    cfg = service_config(kafka_bootstrap, service_topics(1), tiny_artifact)
    with ServiceThread(cfg) as running:
        assert _get(f"{running.url}/healthz")[0] == 200
        assert _get(f"{running.url}/readyz")[0] == 503  # not connected, nothing assigned
        running.start().wait_assigned()
        assert _get(f"{running.url}/readyz") == (200, '{"status": "ready"}')
        status, text = _get(f"{running.url}/metrics")
        assert status == 200 and "anomon_models_loaded 1.0" in text
        running.stop()
        assert _get(f"{running.url}/readyz")[0] == 503
        assert _get(f"{running.url}/healthz")[0] == 200
        assert _get(f"{running.url}/nope")[0] == 404


def test_two_model_workers_score_every_frame_once_in_order_with_the_same_scores(
    tiny_artifact: Path, kafka_bootstrap: str, service_topics: TopicsFactory, read_records: RecordReader
) -> None:
    rng = np.random.default_rng(7)
    images = [cv2.imencode(".jpg", rng.integers(0, 256, (48, 64), np.uint8))[1].tobytes() for _ in range(30)]
    cameras = ["w-1", "w-2", "w-3"]
    scores: dict[int, list[tuple[str, int, float]]] = {}
    for workers in (1, 2):
        topics = service_topics(3)
        cfg = service_config(
            kafka_bootstrap, topics, tiny_artifact, **{"model.workers": workers, "batching.max_batch": 4}
        )
        producer = make_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
        publisher = FramePublisher(producer, topics.frames)
        for i, image in enumerate(images):
            for camera in cameras:
                publisher.send(camera, image, "image/jpeg", i, 1_000_000_000 + i)
        publisher.flush()
        producer.close()
        with ServiceThread(cfg) as running:
            running.start()
            records = read_records(topics.scores, len(images) * len(cameras), timeout_s=60)
        scores[workers] = [(m.camera_id, m.frame_index, m.raw_score) for m in decode_scores(records)]
    one, two = scores[1], scores[2]
    assert len(two) == len(images) * len(cameras)
    for camera in cameras:  # published in each camera's frame order, every frame once
        assert [i for c, i, _ in two if c == camera] == list(range(len(images)))
    # Batches were not mixed up between the workers: each frame has the score a single worker gives.
    by_frame = {(c, i): s for c, i, s in one}
    assert all(abs(s - by_frame[(c, i)]) < 1e-5 for c, i, s in two)


def test_a_batch_is_split_between_idle_model_workers(
    tiny_artifact: Path, kafka_bootstrap: str, service_topics: TopicsFactory, read_records: RecordReader
) -> None:
    image = cv2.imencode(".jpg", np.full((48, 64), 128, np.uint8))[1].tobytes()
    topics = service_topics(1)
    producer = make_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    publisher = FramePublisher(producer, topics.frames)
    for i in range(4):  # in the topic before the service starts: one poll takes all four
        publisher.send("split-1", image, "image/jpeg", i, 1_000_000_000 + i)
    publisher.flush()
    producer.close()
    cfg = service_config(
        kafka_bootstrap,
        topics,
        tiny_artifact,
        **{"model.workers": 2, "batching.max_batch": 4, "batching.max_wait_ms": 2000},
    )
    with ServiceThread(cfg) as running:
        running.start()
        records = read_records(topics.scores, 4, timeout_s=60)
        _, text = _get(f"{running.url}/metrics")
    batches = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name == "anomon_batch_size"
    }
    calls, frames = batches["anomon_batch_size_count"], batches["anomon_batch_size_sum"]
    assert [m.frame_index for m in decode_scores(records)] == [0, 1, 2, 3]
    # Both models idle: the batch of four went to them as two of two, not as one of four.
    assert (calls, frames) == (2, 4)


def test_model_workers_need_a_runtime_that_runs_them_concurrently(
    tiny_artifact: Path, kafka_bootstrap: str, service_topics: TopicsFactory
) -> None:
    from model.config import ConfigError
    from model.runtime import open_runtime
    from monitor.service import MonitorService

    cfg = service_config(kafka_bootstrap, service_topics(1), tiny_artifact, **{"model.workers": 2})
    runtime = open_runtime(tiny_artifact, "onnxruntime", threads=1)
    runtime.backend = "tensorrt"  # what a TensorRT engine reports: one execution context, one thread
    with pytest.raises(ConfigError, match=r"model\.workers"):
        MonitorService(cfg, runtime)


def test_a_runtime_other_than_planned_gets_one_worker_under_auto(
    tiny_artifact: Path, kafka_bootstrap: str, service_topics: TopicsFactory
) -> None:
    from model.runtime import open_runtime
    from monitor.service import MonitorService

    cfg = service_config(kafka_bootstrap, service_topics(1), tiny_artifact, **{"model.workers": "auto"})
    runtime = open_runtime(tiny_artifact, "onnxruntime", threads=1)
    # On a CPU of 2 cores or more (this machine and CI), two workers.
    assert MonitorService(cfg, runtime).workers == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)
    runtime.backend = "tensorrt"
    assert MonitorService(cfg, runtime).workers == 1, "auto never asks a TensorRT engine for two threads"


CPU_ONLY = Availability(cuda=False, tensorrt=False, onnxruntime=True, onnxruntime_cuda=False)
GPU_BOX = Availability(cuda=True, tensorrt=True, onnxruntime=True, onnxruntime_cuda=True)


@pytest.mark.parametrize(
    ("settings", "have", "cores", "plan"),
    [
        ({}, CPU_ONLY, 2, ModelPlan(2, 1)),  # this machine and CI: two workers of one thread
        ({}, CPU_ONLY, 8, ModelPlan(2, 4)),  # the cores split between the two workers
        ({"threads": 3}, CPU_ONLY, 8, ModelPlan(2, 3)),  # threads given: kept
        ({}, CPU_ONLY, 1, ModelPlan(1, None)),  # one core: nothing to share
        ({"backend": "torch"}, CPU_ONLY, 2, ModelPlan(2, 1)),
        ({}, GPU_BOX, 8, ModelPlan(1, None)),  # auto picks TensorRT: one context, one thread
        ({"backend": "onnxruntime"}, GPU_BOX, 8, ModelPlan(1, None)),  # ONNX Runtime on CUDA
        ({"backend": "torch", "device": "cpu"}, GPU_BOX, 8, ModelPlan(2, 4)),  # told to use the CPU
        ({"backend": "onnxruntime", "device": "cuda:1"}, CPU_ONLY, 8, ModelPlan(1, None)),
        ({"workers": 3, "threads": 2}, GPU_BOX, 8, ModelPlan(3, 2)),  # a number is taken as given
    ],
)
def test_auto_workers_plan_two_on_a_cpu_and_one_on_a_gpu(
    settings: dict, have: Availability, cores: int, plan: ModelPlan
) -> None:
    assert plan_model(ModelSettings(**settings), have, cores) == plan


@dataclass
class _PairedStream:
    """Scores of one camera's frames through a live service, and the same frames scored directly."""

    scores: dict[int, float]  # frame index -> published raw score
    metrics: str  # /metrics after scoring
    raw: Callable[[int, int], float]  # (frame, frame it is paired with) -> raw score from the runtime


PairedStreamRunner = Callable[..., _PairedStream]


@pytest.fixture
def paired_stream(
    tiny_artifact: Path,
    ped2_like: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
) -> PairedStreamRunner:
    """run(plan, corrupt, overrides): for each (i, dt) of `plan`, frame i of a ped2-like clip captured
    `dt` ms after now (PNG; bytes that are no image for `corrupt`) goes as camera gate-1 to a live
    service with the tiny motion model; its scores and metrics come back with a direct scorer."""
    from model.data import resize_frame
    from model.runtime import open_runtime

    clip = sorted((ped2_like / "test" / "01").glob("*.jpg"))
    images = [np.asarray(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in clip]
    runtime = open_runtime(tiny_artifact, "onnxruntime", threads=1)
    inputs = [resize_frame(image, runtime.model.config.input) for image in images]

    def raw(i: int, previous: int) -> float:
        return float(runtime.infer(np.concatenate([inputs[i], inputs[previous]])[None])[0][0])

    def run(
        plan: Sequence[tuple[int, float]],
        corrupt: frozenset[int] = frozenset(),
        overrides: dict[str, Any] | None = None,
    ) -> _PairedStream:
        topics = service_topics(1)
        # Live mode; frames count as stale after 30 s, not 2, so that a slow machine drops only the
        # frame stamped a minute back.
        live = {"intake.mode": "live", "intake.max_frame_age_seconds": 30}
        cfg = service_config(kafka_bootstrap, topics, tiny_artifact, **{**live, **(overrides or {})})
        stale = sum(1 for _, dt in plan if dt < -cfg.intake.max_frame_age_seconds * 1e3)
        with ServiceThread(cfg) as running:
            running.start().wait_assigned()
            t0 = time.time_ns()
            records = []
            for i, dt in plan:
                if i in corrupt:
                    payload, content_type = b"\xff\xd8\xff not a jpeg", "image/jpeg"
                else:
                    payload, content_type = cv2.imencode(".png", images[i])[1].tobytes(), "image/png"
                records.append((b"gate-1", payload, frame_headers(content_type, i, t0 + int(dt * 1e6))))
            send_records(kafka_settings, topics.frames, records)
            scored = read_records(topics.scores, len(plan) - len(corrupt) - stale, timeout_s=60)
            status, text = _get(f"{running.url}/metrics")
            running.stop()
        assert status == 200
        return _PairedStream({s.frame_index: s.raw_score for s in decode_scores(scored)}, text, raw)

    return run


def _camera_counters(text: str) -> dict[tuple[str, str | None], float]:
    return {
        (sample.name, sample.labels.get("reason")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("camera") == "gate-1" or family.name == "anomon_dead_letters"
    }


def test_a_frame_after_a_skipped_frame_or_a_capture_gap_is_scored_without_motion(
    paired_stream: PairedStreamRunner,
) -> None:
    """A motion model's frame is paired with the camera's previous frame only when that is the one
    just before it: after a stale or corrupt frame, or a capture gap, it is paired with itself."""
    # (frame index, capture time after now in ms): frame 3 is stale, frame 8 corrupt, 6 after a 3 s gap.
    plan = [(0, 0), (1, 100), (2, 200), (3, -60_000), (4, 300), (5, 400), (6, 3400), (7, 3500), (8, 3550)]
    plan += [(9, 3600), (10, 3700)]
    run = paired_stream(plan, corrupt=frozenset({8}))
    assert sorted(run.scores) == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    expected = {0: 0, 1: 0, 2: 1, 4: 4, 5: 4, 6: 6, 7: 6, 9: 9, 10: 9}  # frame: the frame it is paired with
    for i, previous in expected.items():
        assert run.scores[i] == pytest.approx(run.raw(i, previous), abs=1e-4), f"frame {i}"
    blind = {4: 2, 6: 5, 9: 7}  # after the stale frame, across the gap, after the corrupt frame
    for i, previous in blind.items():
        assert abs(run.raw(i, previous) - run.raw(i, i)) > 1e-2, f"frame {i}: motion changes nothing here"

    counted = _camera_counters(run.metrics)
    assert counted[("anomon_frames_without_motion_total", "first")] == 3  # frames 0, 4 and 9
    assert counted[("anomon_frames_without_motion_total", "gap")] == 1  # frame 6
    assert counted[("anomon_frames_dropped_total", "stale")] == 1
    assert sum(v for (name, _), v in counted.items() if name == "anomon_dead_letters_total") == 1


def test_with_a_motion_interval_a_faster_camera_is_paired_at_the_training_interval(
    paired_stream: PairedStreamRunner,
) -> None:
    """intake.motion_interval_seconds 0.1 (a model of 10 fps footage) and a 30 fps camera: each frame
    is paired with the one captured 100 ms before it, three back, and every frame is scored."""
    plan = [(i, i * 1000 / 30) for i in range(9)]
    run = paired_stream(plan, overrides={"intake.motion_interval_seconds": 0.1})
    assert sorted(run.scores) == list(range(9))
    expected = {0: 0, 1: 1, 2: 0} | {i: i - 3 for i in range(3, 9)}
    for i, previous in expected.items():
        assert run.scores[i] == pytest.approx(run.raw(i, previous), abs=1e-4), f"frame {i}"
    assert abs(run.raw(6, 5) - run.raw(6, 3)) > 1e-2, "the frame paired with makes no difference here"
    counted = _camera_counters(run.metrics)
    assert counted[("anomon_frames_without_motion_total", "first")] == 1
    assert counted[("anomon_frames_without_motion_total", "gap")] == 1  # frame 1: 33 ms back only
