"""`anomon ingest --cameras`: many cameras in one supervised process, against the real broker.

The sources are real: an image folder, a video written with OpenCV (it ends after a few frames, so it
is reopened again and again) and a path that does not exist (it fails, is retried and counted).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from monitor.cli import main
from monitor.frames import parse_record
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.metrics import IngestMetrics
from monitor.supervisor import IngestSupervisor
from tests.monitor.conftest import RecordReader, TopicFactory

FAST_BACKOFF = (0.05, 0.2)


def _scene(index: int) -> np.ndarray:
    image = np.full((48, 64), 60, np.uint8)
    image[:, 4 * index : 4 * index + 4] = 230
    return image


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), _scene(i))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(4):
        writer.write(cv2.cvtColor(_scene(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    return {"folder": folder, "video": video, "missing": tmp_path / "not-yet" / "clip.mp4"}


def _write(path: Path, cameras: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"defaults": {"fps": 50}, "cameras": cameras}))
    return path


def _indices(records: list[Any]) -> dict[str, list[int]]:
    by_camera: dict[str, list[int]] = defaultdict(list)
    for record in records:
        frame = parse_record(record)
        by_camera[frame.camera_id].append(frame.frame_index)
    return by_camera


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_failing_or_ending_source_is_reopened_and_counted_while_the_others_keep_going(
    sources: dict[str, Path],
    tmp_path: Path,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    read_records: RecordReader,
) -> None:
    topic = new_topic(2)
    path = _write(
        tmp_path / "cameras.yaml",
        {
            "folder-cam": {"source": str(sources["folder"])},
            "clip-cam": {"source": str(sources["video"]), "resize": "32x24"},
            "missing-cam": {"source": str(sources["missing"])},
        },
    )
    said: list[str] = []
    metrics = IngestMetrics()
    producer = make_producer(kafka_settings)
    supervisor = IngestSupervisor(
        path, producer, topic, metrics, said.append, FAST_BACKOFF, reload_seconds=0.1
    )
    stop = threading.Event()
    runner = threading.Thread(target=lambda: supervisor.run(stop, progress=False), daemon=True)
    runner.start()
    try:
        feeds = supervisor.feeds
        _until(lambda: len(feeds) == 3, 10, "the feeds to start")
        _until(
            lambda: feeds["clip-cam"].status.restarts >= 3 and feeds["missing-cam"].status.restarts >= 3,
            30,
            "the video to end and the missing path to fail three times each",
        )
        assert feeds["folder-cam"].status.frames > 0 and feeds["missing-cam"].status.frames == 0
        # Said once each: the failure that repeats and the end that repeats.
        assert sum("camera missing-cam: source not found" in line for line in said) == 1, said
        assert sum("camera clip-cam: source ended after 4 frames" in line for line in said) == 1, said
        assert "source not found" in (feeds["missing-cam"].status.error or "")
        failed = metrics.restarts.labels("missing-cam", "failed")._value.get()
        ended = metrics.restarts.labels("clip-cam", "ended")._value.get()
        assert failed >= 3 and ended >= 3
        assert metrics.source_up.labels("missing-cam")._value.get() == 0

        # The file changes while it runs: the missing camera goes, a new one comes, the video is resized.
        _write(
            path,
            {
                "folder-cam": {"source": str(sources["folder"])},
                "clip-cam": {"source": str(sources["video"]), "resize": "16x12"},
                "new-cam": {"source": str(sources["folder"]), "fps": 100},
            },
        )
        _until(lambda: "new-cam" in supervisor.feeds, 10, "the file to be read again")
        _until(lambda: supervisor.feeds["new-cam"].status.frames >= 6, 20, "the new camera's frames")
        assert "missing-cam" not in supervisor.feeds
        assert 'camera="missing-cam"' not in metrics.render().decode()
        resized_from = supervisor.feeds["clip-cam"].next_index
        _until(lambda: supervisor.feeds["clip-cam"].next_index >= resized_from + 4, 20, "resized frames")

        # A bad edit is said, and the cameras keep running as they were.
        path.write_text("cameras:\n  clip-cam: {source: x, fps: -1}\n")
        _until(lambda: any("cameras.clip-cam.fps" in line for line in said), 10, "the bad edit to be said")
        running = supervisor.feeds["folder-cam"].status.frames
        _until(
            lambda: supervisor.feeds["folder-cam"].status.frames > running, 10, "frames after the bad edit"
        )
        assert set(supervisor.feeds) == {"folder-cam", "clip-cam", "new-cam"}
    finally:
        stop.set()
        runner.join(20)
        producer.close(timeout=5)
    assert not runner.is_alive()
    summary = supervisor.summary()
    indices = _indices(read_records(topic, summary.frames, timeout_s=20))
    assert sum(len(v) for v in indices.values()) == summary.frames
    assert set(indices) == {"folder-cam", "clip-cam", "new-cam"}
    # Reopened and restarted sources keep counting: each camera's indices are 0, 1, 2, ... without gaps.
    for camera, got in indices.items():
        assert sorted(got) == list(range(len(got))), camera
    clip = [parse_record(r) for r in read_records(topic, summary.frames) if r.key == b"clip-cam"]
    sizes = {cv2.imdecode(np.frombuffer(f.payload, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] for f in clip}
    assert sizes == {(24, 32), (12, 16)}


def _metrics_url(lines: list[str]) -> str | None:
    for line in lines:
        found = re.search(r"metrics on (http://\S+/metrics)", line)
        if found:
            return found.group(1)
    return None


def test_cli_ingest_cameras_runs_until_sigterm_and_serves_its_metrics(
    sources: dict[str, Path],
    tmp_path: Path,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    read_records: RecordReader,
) -> None:
    topic = new_topic()
    path = _write(
        tmp_path / "cameras.yaml",
        {
            "folder-cam": {"source": str(sources["folder"])},
            "missing-cam": {"source": str(sources["missing"])},
        },
    )
    command = [sys.executable, "-m", "monitor.cli", "ingest", "--cameras", str(path)]
    command += ["--bootstrap", kafka_bootstrap, "--topic", topic, "--http-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert len(read_records(topic, 6, timeout_s=30)) >= 6, "".join(lines)
        url = _metrics_url(lines)
        assert url is not None, lines
        with urllib.request.urlopen(url.replace("/metrics", "/readyz"), timeout=5) as ready:
            assert ready.status == 200
        with urllib.request.urlopen(url, timeout=5) as answer:
            exposed = answer.read().decode()
        assert re.search(r'anomon_ingest_frames_total\{camera="folder-cam"\} [1-9]', exposed), exposed
        assert re.search(
            r'anomon_ingest_source_restarts_total\{camera="missing-cam",reason="failed"\} [1-9]', exposed
        )
        assert 'anomon_ingest_source_up{camera="missing-cam"} 0.0' in exposed
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    reader.join(5)
    assert process.returncode == 0, "".join(lines)
    assert re.search(r"stopped; sent \d+ frames of 2 cameras to ", stdout), stdout
    assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--source", "x"],
            "anomon ingest: error: Invalid value: --source is for one camera; with --cameras",
        ),
        (["--fps", "5"], "--fps is for one camera; with --cameras set each camera's fields in the file"),
        ([], "field 'cameras.a.fps': Input should be greater than 0"),
    ],
)
def test_cli_ingest_cameras_usage_and_file_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "cameras.yaml", {"a": {"source": "x", "fps": -1}})
    assert main(["ingest", "--cameras", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_ingest_needs_a_source_or_a_cameras_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--camera", "gate-1"]) == 2
    assert "give --source and --camera (one camera), or --cameras FILE (many)" in capsys.readouterr().err
