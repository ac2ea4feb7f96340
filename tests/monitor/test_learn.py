"""`anomon learn`: a camera's model learned from its own stream, against the real broker, real training,
ONNX export, the model store and the real service."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from model.config import parse_config
from monitor.cli import main
from monitor.demo import street_scene
from monitor.ingest import FramePublisher
from monitor.kafka_client import ConsumerSettings, KafkaSettings, make_consumer, make_producer
from monitor.learn import (
    Feedback,
    Footage,
    RunSampler,
    collect_footage,
    minimum_frames,
    parse_since,
    read_feedback,
)
from monitor.store import ModelStore
from monitor.wire import FeedbackMessage, ScoreMessage, decode, encode
from tests.conftest import ARTIFACTS
from tests.monitor.conftest import RecordReader, ServiceThread, TopicFactory, service_config

MS = 1_000_000
INTERVAL = 100 * MS  # 10 fps, input.fps by default
# A small AnoMem that learns in seconds on 2 cores: the pretrained encoder frozen, small memories.
FAST = {
    "input": {"height": 80, "width": 120, "motion": True},
    "model": {
        "encoder": "efficientnet_lite0",
        "pretrained": True,
        "freeze_encoder": True,
        "memories": [{"slots": 16, "dim": 16}] * 3,
        "proj_dim": 16,
        "topk": 4,
    },
    "train": {"epochs": 2, "batch_size": 8, "frames_per_epoch": 32, "detector_epochs": 2},
}
# Calibrated on the last quarter: 40 frames are the least it can learn from.
LEARN_SET = ["--set", "train.holdout_fraction=0.7"]  # a calibration needs 25 held-out frames


# --- pure logic -----------------------------------------------------------------------------------


def _sample(times_ms: Sequence[float], fps: float = 10.0) -> tuple[list[list[float]], int]:
    """Offer frames captured at `times_ms` (each frame is its own time); the runs kept and skips."""
    sampler: RunSampler[float] = RunSampler(fps)
    runs: list[list[float]] = []
    decided = [d for t in times_ms for d in sampler.offer(t, round(t * MS))] + sampler.finish()
    for item, _, starts in decided:
        if starts:
            runs.append([])
        runs[-1].append(item)
    return runs, sampler.skipped


def test_a_camera_at_the_model_rate_keeps_every_frame_and_a_capture_gap_splits_the_run() -> None:
    jitter = [0, 3, -4, 2, 0, -2, 4, 1]
    first = [i * 100 + j for i, j in enumerate(jitter)]
    after_gap = [1500 + i * 100 for i in range(5)]  # 0.8 s after the last frame: 8 intervals
    runs, skipped = _sample(first + after_gap)
    assert runs == [first, after_gap] and skipped == 0


def test_a_faster_camera_keeps_the_frame_closest_to_each_interval() -> None:
    times = [i * 1000 / 30 for i in range(31)]  # 30 fps for 1 s
    runs, skipped = _sample(times)
    assert len(runs) == 1
    assert [round(t) for t in runs[0]] == list(range(0, 1001, 100))
    assert skipped == 20


def test_a_slower_camera_has_no_pairs_and_repeats_and_clock_resets_are_handled() -> None:
    runs, _ = _sample([0, 200, 400, 600])  # 5 fps: every frame two intervals from the last
    assert runs == [[0], [200], [400], [600]]
    # A repeated frame and one slightly out of order are skipped; a clock set back starts a new run.
    runs, skipped = _sample([0, 100, 100, 90, 200, 300, -5000, -4900])
    assert runs == [[0, 100, 200, 300], [-5000, -4900]] and skipped == 2


def test_the_hold_out_is_spread_over_the_footage_and_runs_are_cut_at_its_segments() -> None:
    footage = Footage(camera="gate", fps=10)
    for start, count in ((0, 60), (10_000, 40)):
        for i in range(count):
            ts = (start + 100 * i) * MS
            footage.add(np.full((1, 4, 4), i, np.uint8), ts, starts_run=i == 0)
    footage.add(np.zeros((1, 4, 4), np.uint8), 99_000 * MS, starts_run=True)  # alone: no pair
    footage.end_run()
    assert footage.frames == 100 and footage.isolated == 1 and len(footage.runs) == 2
    # 25 frames held out (a quarter of 100, under 50): one segment, centred on the footage. Centred,
    # the first run's end would cut it (22 + 3 frames), so it moves inside the run holding most of it.
    fit, held = footage.split(0.1)
    assert [(c.name, len(c.frames)) for c in held] == [("gate@1970-01-01T00:00:00.000Z[35:60]", 25)]
    assert int(held[0].frames[0, 0, 0, 0]) == 35  # frame 35 of the first run
    assert [len(c.frames) for c in fit] == [35, 40]


def test_minimum_footage_follows_the_holdout_and_the_batch() -> None:
    assert minimum_frames(parse_config({})) == 100  # 25 held out (a quarter), 75 to train on
    assert minimum_frames(parse_config({"train": {"holdout_fraction": 0.25, "batch_size": 8}})) == 97
    assert minimum_frames(parse_config({"train": {"holdout_fraction": 0.5, "batch_size": 32}})) == 64
    assert minimum_frames(parse_config({"train": {"holdout_fraction": 0}})) == 32


def test_since_takes_earliest_durations_and_times() -> None:
    now = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
    assert parse_since("earliest", now) is None
    assert parse_since("30m", now) == int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1000)
    assert parse_since("2026-11-22T08:00:00Z", now) == parse_since("2h", now)
    assert parse_since("2026-11-22T09:00:00+01:00", now) == parse_since("2h", now)
    with pytest.raises(ValueError, match="--since 'yesterday': give earliest"):
        parse_since("yesterday", now)


def _feedback(
    camera: str,
    verdict: str,
    start_ms: int,
    end_ms: int | None,
    given_ms: int,
    alert_id: uuid.UUID | None = None,
) -> FeedbackMessage:
    def ts(ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    return FeedbackMessage(
        alert_id=alert_id or uuid.uuid4(),
        camera_id=camera,
        verdict=verdict,  # type: ignore[arg-type]
        ts=ts(given_ms),
        alert_start_ts=ts(start_ms),
        alert_end_ts=None if end_ms is None else ts(end_ms),
        model=None,
    )


def test_an_alerts_latest_verdict_counts_and_an_open_alert_runs_until_it_was_judged() -> None:
    changed = uuid.uuid4()
    feedback = Feedback.from_messages(
        [
            _feedback("gate", "real", 1000, 2000, 5000, changed),
            _feedback("gate", "false_alarm", 1000, 2000, 6000, changed),  # the operator changed their mind
            _feedback("gate", "real", 3000, None, 3500),  # still open when judged
        ]
    )
    assert feedback.count("real") == 1 and feedback.count("false_alarm") == 1
    assert feedback.is_false_alarm(1500 * MS) and not feedback.is_real(1500 * MS)
    assert feedback.is_false_alarm(2000 * MS + 999_999)  # the whole last millisecond of the alert
    assert feedback.is_real(3400 * MS) and not feedback.is_real(3501 * MS)


# --- against the broker ---------------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def _publish(
    settings: KafkaSettings,
    topic: str,
    frames: dict[str, list[bytes]],
    start_ns: int,
    first_index: int = 0,
) -> None:
    """Send each camera's frames at 10 fps from `start_ns`, the cameras interleaved as live ones are."""
    producer = make_producer(settings)
    try:
        publisher = FramePublisher(producer, topic)
        for i in range(max(len(f) for f in frames.values())):
            for camera, payloads in frames.items():
                if i < len(payloads):
                    index = first_index + i
                    publisher.send(camera, payloads[i], "image/jpeg", index, start_ns + i * INTERVAL)
        publisher.flush()
    finally:
        producer.close()


def _send_feedback(settings: KafkaSettings, topic: str, values: Sequence[tuple[str, bytes]]) -> None:
    producer = make_producer(settings)
    try:
        for camera, value in values:
            producer.send(topic, key=camera.encode(), value=value)
        producer.flush()
    finally:
        producer.close()


@pytest.fixture
def consumer(kafka_settings: KafkaSettings) -> Iterator[Any]:
    made = make_consumer(kafka_settings, [], ConsumerSettings(group_id=f"test-learn-{uuid.uuid4().hex[:6]}"))
    yield made
    made.close()


def test_frames_of_real_alerts_are_left_out_false_alarms_kept_and_bad_frames_skipped(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, consumer: Any
) -> None:
    frames_topic, feedback_topic = new_topic(2, ".frames"), new_topic(1, ".feedback")
    gate = [_jpeg(image) for image in street_scene(60, None, seed=3)[0]]
    gate[45] = b"\xff\xd8\xff not a jpeg after all"  # the camera's encoder failed on one frame
    t0_ms = int(time.time() * 1000) - 600_000
    _publish(
        kafka_settings,
        frames_topic,
        {"gate": gate, "yard": gate[:40]},
        t0_ms * MS,
    )

    def at(frame: int) -> int:
        return t0_ms + frame * 100

    changed = uuid.uuid4()
    messages = [
        ("gate", _feedback("gate", "real", at(10), at(19), at(70))),
        ("gate", _feedback("gate", "false_alarm", at(30), at(34), at(70))),
        ("gate", _feedback("gate", "real", at(25), at(27), at(70), changed)),
        ("gate", _feedback("gate", "false_alarm", at(25), at(27), at(80), changed)),
        ("gate", _feedback("gate", "acknowledged", at(50), at(52), at(70))),
        ("yard", _feedback("yard", "real", at(35), at(41), at(70))),  # another camera's: no effect
    ]
    _send_feedback(
        kafka_settings,
        feedback_topic,
        [(camera, encode(message)) for camera, message in messages] + [("gate", b"{not json")],
    )
    feedback = read_feedback(consumer, feedback_topic, "gate")
    assert (feedback.count("real"), feedback.count("false_alarm"), feedback.unreadable) == (1, 2, 1)
    spec = parse_config(FAST).input
    footage = collect_footage(consumer, frames_topic, "gate", spec, 1000, feedback, progress=False)
    kept = [[(ns // MS - t0_ms) // 100 for ns in run.capture_ns] for run in footage.runs]
    # The real alert's frames (10-19) are left out and frame 45 does not decode: each ends a run.
    assert kept == [list(range(10)), list(range(20, 45)), list(range(46, 60))]
    assert (footage.records, footage.real, footage.unreadable, footage.skipped) == (60, 10, 1, 0)
    assert footage.false_alarm_frames(feedback) == 5 + 3
    assert footage.other_cameras == {"yard"}
    assert footage.runs[0].frames[0].shape == (1, spec.height, spec.width)
    # From a given time on: frames captured before it are not footage.
    later = collect_footage(consumer, frames_topic, "gate", spec, 1000, feedback, at(30), progress=False)
    assert [[(ns // MS - t0_ms) // 100 for ns in run.capture_ns] for run in later.runs] == [
        list(range(30, 45)),
        list(range(46, 60)),
    ]


def _learn_config(tmp_path: Path, **train: Any) -> Path:
    data = json.loads(json.dumps(FAST))
    data["train"].update(train)
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _learn_args(
    bootstrap: str, topic: str, feedback_topic: str, camera: str, store: Path, config: Path
) -> list[str]:
    return [
        "learn",
        "--camera",
        camera,
        "--store",
        str(store),
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--feedback-topic",
        feedback_topic,
        "--config",
        str(config),
        *LEARN_SET,
    ]


def test_too_little_footage_is_refused_in_one_line_saying_how_much_is_needed(
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames_topic, feedback_topic = new_topic(1, ".frames"), new_topic(1, ".feedback")
    images = street_scene(30, None, seed=4)[0]
    _publish(kafka_settings, frames_topic, {"gate": [_jpeg(i) for i in images]}, time.time_ns() - 60 * 10**9)
    store = tmp_path / "store"
    args = _learn_args(kafka_bootstrap, frames_topic, feedback_topic, "gate", store, _learn_config(tmp_path))
    expected = {
        "100": "camera gate: 30 frames at 10 fps (3 s) on {topic} since earliest, 100 needed (10 s): let "
        "the camera record longer",
        "10": "10 frames is too little for this config: at least 35 (4 s at 10 fps), 25 of them held "
        "out to calibrate (train.holdout_fraction 0.7); ask for --frames 35 or more",
    }
    for frames, message in expected.items():
        capsys.readouterr()
        assert main([*args, "--frames", frames]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # the progress bar comes before it
        assert err.startswith("anomon learn: error: " + message.format(topic=frames_topic)), err
    assert main([*args, "--camera", "gate-2", "--frames", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        f"no frames of camera gate-2 on {frames_topic} since earliest (cameras seen: gate): "
        "check --camera, --topic and --since"
    ), err
    assert not store.exists()  # nothing learned, nothing created


def _store_list(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    assert main(["store", "list", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    return {e["camera"]: e["sha256"] for e in listed if e["serving"]}


def test_two_cameras_learn_their_own_scenes_and_every_score_carries_its_cameras_model(
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    service_topics: Any,
    read_records: RecordReader,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = service_topics(2)
    feedback_topic = new_topic(1, ".feedback")
    street = street_scene(80, None, seed=5)[0]
    # The second camera films another scene: the street mirrored and shifted.
    mirrored = [np.roll(cv2.flip(image, 1), 40, axis=1) for image in street]
    scenes = {"street": [_jpeg(i) for i in street], "mirror": [_jpeg(i) for i in mirrored]}
    start_ns = time.time_ns() - 120 * 10**9
    _publish(kafka_settings, topics.frames, {c: f[:70] for c, f in scenes.items()}, start_ns)

    def at(frame: int) -> int:
        return (start_ns + frame * INTERVAL) // MS

    # An operator judged two of the street camera's alerts: frames 20-24 real, 40-44 a false alarm.
    verdicts = [("real", 20, 24), ("false_alarm", 40, 44)]
    _send_feedback(
        kafka_settings,
        feedback_topic,
        [("street", encode(_feedback("street", v, at(a), at(b), at(b + 10)))) for v, a, b in verdicts],
    )
    expected = {
        # One frame past the 60th tells that the 60th is the closest to its interval.
        "mirror": ("read 61 frames of camera mirror: kept 60 at 10 fps (6 s) in 1 run;", "real: 0,"),
        "street": (
            "read 66 frames of camera street: kept 60 at 10 fps (6 s) in 2 runs;",
            "feedback: alerts marked real: 1, their 5 frames left out; false alarms: 1, their 5 frames kept "
            "as normal footage",
        ),
    }
    store = tmp_path / "store"
    cfg = service_config(
        kafka_bootstrap, topics, None, **{"model.store": str(store), "model.store_poll_seconds": 0.2}
    )
    store.mkdir()
    with ServiceThread(cfg) as running:
        # The service runs all along: the cameras are learning until their models are in the store.
        running.start().wait_assigned()
        config = _learn_config(tmp_path)
        for camera in scenes:
            capsys.readouterr()
            args = _learn_args(kafka_bootstrap, topics.frames, feedback_topic, camera, store, config)
            assert main([*args, "--frames", "60", "--backend", "onnxruntime"]) == 0
            summary = capsys.readouterr().out
            assert all(line in summary for line in expected[camera]), summary
            assert "trained on 18 frames, calibrated on 42 held out" in summary
            assert f"added camera {camera} version 1: anomem {camera}-" in summary
            assert "(fp32 export for onnxruntime" in summary
        serving = _store_list(store, capsys)
        assert set(serving) == {"street", "mirror"} and serving["street"] != serving["mirror"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            (m := running.service.router.model_for(c)) is None or m.info.sha256 != serving[c] for c in scenes
        ):
            time.sleep(0.1)
        _publish(
            kafka_settings,
            topics.frames,
            {c: f[70:] for c, f in scenes.items()},
            start_ns + 70 * INTERVAL,
            70,
        )
        scores = [decode(r.value) for r in read_records(topics.scores, 20, timeout_s=60)]
        assert running.service.stats.learning == 140  # what came before the models: not scored
    assert len(scores) == 20 and all(isinstance(s, ScoreMessage) for s in scores)
    for score in scores:
        assert isinstance(score, ScoreMessage)
        assert score.model.sha256 == serving[score.camera_id], score.camera_id
    assert sorted((s.camera_id, s.frame_index) for s in scores) == sorted(
        (c, i) for c in scenes for i in range(70, 80)
    )


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) and its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_ctrl_c_while_training_leaves_the_store_as_it_was(
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    frames_topic, feedback_topic = new_topic(1, ".frames"), new_topic(1, ".feedback")
    images = street_scene(50, None, seed=6)[0]
    _publish(kafka_settings, frames_topic, {"gate": [_jpeg(i) for i in images]}, time.time_ns() - 60 * 10**9)
    store = ModelStore(tmp_path / "store", create=True)
    store.add(ARTIFACTS / "daad_ped2.safetensors", "gate")  # the model learning would replace
    before = _tree(store.root)
    temp = tmp_path / "tmp"
    temp.mkdir()
    config = _learn_config(tmp_path, epochs=1000)  # long enough to be interrupted in
    args = _learn_args(kafka_bootstrap, frames_topic, feedback_topic, "gate", store.root, config)
    learner = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", *args, "--frames", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(temp)},
    )
    try:
        assert learner.stdout is not None
        for line in learner.stdout:
            if line.startswith("training on "):  # the footage is read; training starts
                break
        learner.send_signal(signal.SIGINT)
        out, err = learner.communicate(timeout=60)
    finally:
        learner.kill()
    assert learner.returncode == 130, err[-2000:]
    assert err.rstrip().endswith("anomon learn: interrupted") and "Traceback" not in err
    assert "added camera" not in out
    assert _tree(store.root) == before
    assert not list(temp.glob("anomon-learn-*"))  # the training folder went with it
