"""`anomon ingest`: pacing, sources, and frames arriving in Kafka with every v1 header."""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from monitor.cli import main
from monitor.frames import decode_frame, parse_record
from monitor.ingest import FramePublisher, FrameSource, Pacer, SourceError, ingest, open_source, parse_size
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.wire import FRAME_SCHEMA_VERSION, HEADER_SCHEMA, load_schema, record_document
from tests.monitor.conftest import RecordReader, TopicFactory

FRAME_SCHEMA = jsonschema.Draft202012Validator(load_schema("frame"))


def _scene(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A grey frame with a bright bar whose position encodes `index`."""
    image = np.full((height, width), 60, np.uint8)
    image[:, 4 * index : 4 * index + 4] = 230
    return image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), _scene(i))
    return folder


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(5):
        writer.write(cv2.cvtColor(_scene(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


@pytest.fixture
def video_url(video_file: Path) -> Iterator[str]:
    """The video served over HTTP on loopback: a live stream as far as ingest can tell."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(video_file.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{video_file.name}"
    server.shutdown()
    thread.join()


def _bar_position(image: np.ndarray) -> int:
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return int(np.argmax(gray.mean(axis=0)) // 4)


def _check_v1_records(records: list[Any], camera: str, indices: list[int]) -> list[np.ndarray]:
    """Every record is a valid v1 frame of `camera`, in index order; returns the decoded images."""
    assert [r.key for r in records] == [camera.encode()] * len(indices)
    frames = [parse_record(r) for r in records]
    assert [f.frame_index for f in frames] == indices
    for record, frame in zip(records, frames, strict=True):
        assert FRAME_SCHEMA.is_valid(record_document(record.key, record.headers))
        assert dict(record.headers)[HEADER_SCHEMA] == FRAME_SCHEMA_VERSION.encode()
        assert {name for name, _ in record.headers} >= {"content-type", "frame-index", "capture-ts-ns"}
        assert frame.content_type == "image/jpeg"
        assert record.timestamp == frame.capture_ts_ns // 1_000_000
    capture = [f.capture_ts_ns for f in frames]
    assert capture == sorted(capture) and abs(capture[0] / 1e9 - time.time()) < 60
    return [decode_frame(f, grayscale=True) for f in frames]


# --- pacing (pure) --------------------------------------------------------------------------------


def test_pacer_spaces_frames_by_the_period_without_bursts() -> None:
    pacer = Pacer(10.0)
    assert pacer.delay(100.0) == 0.0
    pacer.sent(100.0)
    assert pacer.delay(100.03) == pytest.approx(0.07)
    pacer.sent(100.1)
    assert pacer.delay(100.15) == pytest.approx(0.05)
    # Two seconds late: the schedule restarts instead of owing 20 frames.
    pacer.sent(102.2)
    assert pacer.delay(102.2) == pytest.approx(0.1)


def test_pacer_keeps_a_live_rate_by_dropping() -> None:
    pacer = Pacer(10.0)
    arrivals = np.arange(0, 3, 1 / 30)  # a 30 fps camera for 3 s
    kept = 0
    for now in arrivals:
        if pacer.due(float(now)):
            pacer.sent(float(now))
            kept += 1
    # 10 fps for 3 s (the last frame may take the 3.0 s slot half a period early).
    assert kept in (30, 31)
    # A 30 fps camera with +-5 ms jitter kept at 30 fps loses nothing.
    pacer, kept = Pacer(30.0), 0
    jitter = np.random.default_rng(0).uniform(-0.005, 0.005, 90)
    for now in np.arange(90) / 30 + jitter:
        if pacer.due(float(now)):
            pacer.sent(float(now))
            kept += 1
    assert kept == 90
    assert Pacer(None).delay(5.0) == 0.0 and Pacer(None).due(5.0)
    with pytest.raises(ValueError, match="--fps"):
        Pacer(0)


def test_sizes_and_sources_are_checked(tmp_path: Path) -> None:
    assert parse_size("640x360") == (640, 360)
    for bad in ("640", "0x10", "axb", "640x360x2"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "nope.mp4"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="not a video file"):
        open_source(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))


# --- through Kafka --------------------------------------------------------------------------------


def test_an_image_folder_arrives_in_order_with_v1_headers(
    image_folder: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic(partitions=3)
    producer = make_producer(kafka_settings)
    try:
        report = ingest(
            open_source(str(image_folder)),
            FramePublisher(producer, topic),
            "lobby.cam-2",
            fps=200,
            progress=False,
        )
    finally:
        producer.close()
    assert (report.frames, report.dropped) == (6, 0)
    images = _check_v1_records(read_records(topic, 6), "lobby.cam-2", list(range(6)))
    assert [_bar_position(image) for image in images] == list(range(6))
    assert images[0].shape == (48, 64)


def test_a_video_is_paced_at_its_own_rate_and_loops(
    video_file: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic()
    producer = make_producer(kafka_settings)
    try:
        source = open_source(str(video_file))
        assert source.fps == 25.0 and source.length == 5 and not source.live
        report = ingest(
            source,
            FramePublisher(producer, topic),
            "gate-1",
            resize=(32, 24),
            loop=True,
            max_frames=12,
            start_index=100,
            progress=False,
        )
    finally:
        producer.close()
    # 12 frames at 25 fps: 11 periods of 40 ms at least.
    assert report.frames == 12 and report.seconds >= 0.43
    images = _check_v1_records(read_records(topic, 12), "gate-1", list(range(100, 112)))
    assert all(image.shape == (24, 32) for image in images)
    # Looping starts the clip again: frames 5 and 10 show clip frame 0 again.
    assert [_bar_position(cv2.resize(i, (64, 48))) for i in images[:6]] == [0, 1, 2, 3, 4, 0]


def test_a_stream_keeps_its_own_rate_or_drops_frames_above_fps(
    video_url: str, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic()
    producer = make_producer(kafka_settings)
    try:
        source = open_source(video_url)
        assert source.live and source.length is None
        publisher = FramePublisher(producer, topic)
        every = ingest(source, publisher, "street", progress=False)
        # The 5 frames arrive within milliseconds: at 1 fps only the first one has a slot.
        limited = ingest(source, publisher, "street", fps=1.0, start_index=5, progress=False)
    finally:
        producer.close()
    assert (every.frames, every.dropped) == (5, 0)
    assert (limited.frames, limited.dropped) == (1, 4)
    images = _check_v1_records(read_records(topic, 6), "street", [0, 1, 2, 3, 4, 5])
    assert [_bar_position(image) for image in images] == [0, 1, 2, 3, 4, 0]


class _CtrlCAfter(FrameSource):
    """A live camera whose operator presses Ctrl-C after `count` frames."""

    live = True

    def __init__(self, count: int) -> None:
        self.name, self.count = "ctrl-c", count

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(self.count):
            yield _scene(i)
        raise KeyboardInterrupt


def test_ctrl_c_ends_an_ingest_with_its_frames_flushed(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic()
    producer = make_producer(kafka_settings)
    try:
        report = ingest(_CtrlCAfter(3), FramePublisher(producer, topic), "cam", loop=True, progress=False)
    finally:
        producer.close()
    assert report.interrupted and report.frames == 3
    assert len(_check_v1_records(read_records(topic, 3), "cam", [0, 1, 2])) == 3


def test_cli_ingest_sends_and_reports(
    image_folder: Path,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    read_records: RecordReader,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic()
    args = ["ingest", "--source", str(image_folder), "--camera", "cli-cam", "--bootstrap", kafka_bootstrap]
    assert main([*args, "--topic", topic, "--fps", "100", "--max-frames", "4", "--jpeg-quality", "70"]) == 0
    assert "sent 4 frames of camera cli-cam" in capsys.readouterr().out
    _check_v1_records(read_records(topic, 4), "cli-cam", [0, 1, 2, 3])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "/nonexistent/clip.mp4", "--camera", "c"], "source not found: /nonexistent/clip.mp4"),
        (["--camera", "bad id"], "--camera 'bad id'"),
        (["--camera", "c", "--resize", "big"], "--resize 'big'"),
        (["--camera", "c", "--jpeg-quality", "0"], "--jpeg-quality"),
        (["--camera", "c", "--bootstrap", "127.0.0.1:9"], r"cannot reach Kafka at 127\.0\.0\.1:9"),
    ],
)
def test_cli_ingest_errors_are_one_line(
    extra: list[str],
    message: str,
    image_folder: Path,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ANOMON_BOOTSTRAP", kafka_bootstrap)
    args = ["ingest", "--source", str(image_folder), "--max-frames", "1", *extra]
    # A short connect timeout keeps the unreachable-broker case fast.
    config = image_folder.parent / "kafka.yaml"
    config.write_text("connect_timeout_ms: 500\n")
    assert main([*args, "--kafka-config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomon ingest: error:") and "\n" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("command", ["ingest", "replay"])
def test_help_shows_the_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"Usage: anomon {command}" in out
    assert "[default: anomon.frames]" in out and "ANOMON_BOOTSTRAP" in out
