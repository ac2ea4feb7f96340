"""`anomon run` as a process: bad configuration, SIGKILL and restart, SIGTERM drain, start before Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from monitor.broker import EmbeddedBroker, free_port
from monitor.config import load_service_config
from monitor.frames import parse_record
from monitor.ingest import FramePublisher, ingest, open_source
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.replay import ReplayReport, find_clips, replay
from monitor.service import plan_model
from monitor.wire import AlertMessage, decode
from tests.monitor.conftest import RecordReader, ServiceTopics, decode_scores

TopicsFactory = Callable[[int], ServiceTopics]
MAX_BATCH = 4


def _config(
    path: Path, bootstrap: str, topics: ServiceTopics, artifact: Path, group: str, **extra: Any
) -> Path:
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        # A killed member is noticed after the session timeout; keep the rejoin short.
        "consumer": {"group_id": group, "session_timeout_ms": 3000, "heartbeat_interval_ms": 1000},
        "topics": {
            "frames": topics.frames,
            "scores": topics.scores,
            "alerts": topics.alerts,
            "dead_letters": topics.dead_letters,
        },
        "model": {"artifact": str(artifact), "backend": "onnxruntime", "threads": 1},
        "intake": {"mode": "replay"},
        "batching": {"max_batch": MAX_BATCH, "max_wait_ms": 5},
        "http": {"port": 0},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


class AnomonRun:
    """An `anomon run` subprocess; its stderr is collected by a thread (the metrics URL is on it)."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "monitor.cli", "run", "--config", str(config), *args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def readyz_url(self) -> str | None:
        """The /readyz URL, once the service has said where its metrics are."""
        urls = [line.split("metrics on ", 1)[1].strip() for line in self.stderr if "metrics on http" in line]
        return urls[0].replace("/metrics", "/readyz") if urls else None

    def readyz(self) -> int | None:
        """The /readyz status code (None: no endpoint yet)."""
        url = self.readyz_url()
        if url is None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as err:
            return err.code
        except urllib.error.URLError:
            return None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until /readyz answers 200 (model loaded, partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.stderr)
            if self.readyz() == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"anomon run not ready within {timeout_s} s: {''.join(self.stderr)[-2000:]}")

    def wait(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """Exit code and stdout."""
        # Not communicate(): it would read stderr too, racing the collecting thread.
        self.process.wait(timeout_s)
        self._reader.join(5)
        assert self.process.stdout is not None
        return self.process.returncode, self.process.stdout.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture
def processes() -> Iterator[list[AnomonRun]]:
    """Every process a test starts is killed at its end, whatever happened."""
    started: list[AnomonRun] = []
    yield started
    for run in started:
        run.kill()


def _paced_replay(
    kafka_settings: KafkaSettings, topic: str, data: Path, fps: float, cameras: int
) -> tuple[threading.Thread, list[ReplayReport]]:
    """Replays `data` in a thread at `fps` per camera, like live cameras; the report lands in the list."""
    reports: list[ReplayReport] = []

    def send() -> None:
        producer = make_producer(kafka_settings)
        try:
            clips = find_clips(data)
            reports.append(
                replay(clips, FramePublisher(producer, topic), fps=fps, cameras=cameras, progress=False)
            )
        finally:
            producer.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, reports


def _wait_for(read_records: RecordReader, topic: str, count: int, timeout_s: float = 30) -> list[Any]:
    records = read_records(topic, count, timeout_s=timeout_s)
    assert len(records) >= count, f"{len(records)} of {count} records on {topic} within {timeout_s} s"
    return records


@pytest.mark.parametrize("source", ["yaml", "environment", "flag"])
def test_a_bad_configuration_fails_at_start_with_one_line_naming_the_field(
    source: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    config = tmp_path / "run.yaml"
    sections: dict[str, Any] = {"model": {"artifact": str(tiny_artifact)}}
    env, flags = {}, []
    field, fix = "batching.max_batch", "greater than or equal to 1"
    if source == "yaml":
        sections["batching"] = {"max_batch": 0}
    elif source == "environment":
        env["ANOMON__BATCHING__MAX_BATCH"] = "0"
    else:
        flags = ["--workers", "two"]
        field, fix = "model.workers", "set auto or 1 to 16"
    config.write_text(yaml.safe_dump(sections))
    run = AnomonRun(config, *flags, env=env)
    code, _ = run.wait()
    lines = "".join(run.stderr).strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert f"field '{field}'" in lines[0] and fix in lines[0]


def test_a_killed_service_loses_no_frame_after_a_restart(
    tiny_artifact: Path,
    ped2_like: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
    processes: list[AnomonRun],
) -> None:
    topics = service_topics(2)
    config = _config(
        tmp_path / "run.yaml", kafka_bootstrap, topics, tiny_artifact, f"kill-{uuid.uuid4().hex[:8]}"
    )
    first = AnomonRun(config)
    processes.append(first)
    first.wait_ready()
    sender, reports = _paced_replay(kafka_settings, topics.frames, ped2_like, fps=25, cameras=2)
    _wait_for(read_records, topics.scores, 24)
    first.process.send_signal(signal.SIGKILL)
    first.kill()
    before_kill = len(read_records(topics.scores, 10_000, timeout_s=1))
    sender.join(30)
    (report,) = reports
    sent = {(f.camera_id, f.frame_index) for f in report.sent}
    assert len(sent) == 96 and before_kill < len(sent), "the kill did not land mid-stream"

    second = AnomonRun(config, "--exit-when-idle", "3")
    processes.append(second)
    code, stdout = second.wait(90)
    assert code == 0, "".join(second.stderr)[-2000:]
    scores = decode_scores(read_records(topics.scores, 10_000, timeout_s=3))
    scored = [(s.camera_id, s.frame_index) for s in scores]
    assert set(scored) == sent, f"frames lost: {sorted(sent - set(scored))[:10]}"
    # At least once: only what the killed instance had not committed is scored twice (the batches in
    # its models and the one being published).
    duplicates = len(scored) - len(sent)
    workers = plan_model(load_service_config(config, environ={}).model).workers
    assert 0 <= duplicates <= (workers + 1) * MAX_BATCH
    assert f"with model.workers {workers}, model.threads 1" in "".join(second.stderr), "says what it chose"
    assert f"stopped after {len(scored) - before_kill} frames scored" in stdout


def test_sigterm_drains_publishes_commits_and_ends_the_open_alert(
    tiny_artifact: Path,
    ped2_like: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: TopicsFactory,
    read_records: RecordReader,
    processes: list[AnomonRun],
) -> None:
    topics = service_topics(1)
    group = f"term-{uuid.uuid4().hex[:8]}"
    # Alerts on the first frame over threshold, and stay open until something ends them.
    cameras = {"defaults": {"smoothing_frames": 1, "min_frames": 1, "cutoff_seconds": 600}}
    config = _config(tmp_path / "run.yaml", kafka_bootstrap, topics, tiny_artifact, group, cameras=cameras)
    run = AnomonRun(config)
    processes.append(run)
    run.wait_ready()
    sender, reports = _paced_replay(kafka_settings, topics.frames, ped2_like, fps=20, cameras=1)
    start = decode(_wait_for(read_records, topics.alerts, 1)[0].value)
    assert isinstance(start, AlertMessage) and start.type == "start"
    run.process.send_signal(signal.SIGTERM)
    code, stdout = run.wait(30)
    assert code == 0, "".join(run.stderr)[-2000:]
    assert "anomon run: stopped after" in stdout
    sender.join(30)
    assert reports and len(reports[0].sent) == 48

    alerts = [decode(r.value) for r in read_records(topics.alerts, 10_000, timeout_s=2)]
    ends = [a for a in alerts if isinstance(a, AlertMessage) and a.type == "end"]
    assert [a.alert_id for a in ends] == [start.alert_id] and ends[0].end_ts is not None

    # What was consumed was published and committed: the scores are exactly the frames below the
    # committed offset.
    checker = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        committed = checker.committed(TopicPartition(topics.frames, 0)) or 0
    finally:
        checker.close()
    frames = {r.offset: parse_record(r) for r in read_records(topics.frames, 48)}
    scored = [
        (s.camera_id, s.frame_index) for s in decode_scores(read_records(topics.scores, 10_000, timeout_s=2))
    ]
    assert 0 < committed <= 48
    assert sorted(scored) == sorted((frames[o].camera_id, frames[o].frame_index) for o in range(committed))

    # A restarted member of the group scores only the rest, nothing twice.
    rest = AnomonRun(config, "--exit-when-idle", "2")
    processes.append(rest)
    code, _ = rest.wait(90)
    assert code == 0
    scored = [
        (s.camera_id, s.frame_index) for s in decode_scores(read_records(topics.scores, 10_000, timeout_s=2))
    ]
    assert sorted(scored) == sorted((f.camera_id, f.frame_index) for f in frames.values())


def test_run_started_before_kafka_waits_quietly_and_becomes_ready_when_kafka_appears(
    tiny_artifact: Path, ped2_like: Path, tmp_path: Path, processes: list[AnomonRun]
) -> None:
    port = free_port()  # nothing listens here yet
    topics = ServiceTopics(*(f"late.{name}" for name in ("frames", "scores", "alerts", "dlq", "thumbnails")))
    config = _config(tmp_path / "run.yaml", f"127.0.0.1:{port}", topics, tiny_artifact, "late")
    run = AnomonRun(config)
    processes.append(run)
    deadline = time.monotonic() + 60
    while not any("waiting for Kafka at" in line for line in run.stderr):
        assert time.monotonic() < deadline and run.process.poll() is None, "".join(run.stderr)
        time.sleep(0.1)
    assert run.readyz() == 503
    time.sleep(3)  # several probes fail meanwhile; none of them may add a line
    assert run.readyz() == 503 and run.process.poll() is None

    with EmbeddedBroker(port=port) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        create_topics(settings, {topics.frames: 1})
        run.wait_ready(60)
        producer = make_producer(settings)
        try:
            clip = open_source(str(ped2_like / "test" / "01"))
            sent = ingest(
                clip,
                FramePublisher(producer, topics.frames),
                "late-cam",
                fps=100,
                max_frames=8,
                progress=False,
            )
        finally:
            producer.close()
        assert sent.frames == 8
        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
        try:
            reader.assign([TopicPartition(topics.scores, 0)])
            records: list[Any] = []
            deadline = time.monotonic() + 30
            while len(records) < 8 and time.monotonic() < deadline:
                for batch in reader.poll(timeout_ms=200).values():
                    records.extend(batch)
        finally:
            reader.close()
        assert sorted(s.frame_index for s in decode_scores(records)) == list(range(8))
        run.process.send_signal(signal.SIGTERM)
        code, stdout = run.wait(30)
    assert code == 0 and "stopped after 8 frames scored" in stdout
    said = "".join(run.stderr)
    assert said.count("waiting for Kafka at 127.0.0.1:") == 1, said
    assert f"waiting for Kafka at 127.0.0.1:{port} (connection refused); start it (`anomon broker`" in said
    assert "answers after" in said
    # kafka-python's own connection errors (several lines per attempt) are kept quiet while it waits.
    assert "kafka.net" not in said and "ECONNREFUSED" not in said, said
