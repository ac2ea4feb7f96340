"""`anomon replay`: dataset clips into Kafka as N cameras, mapped back to clip frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.cli import main
from monitor.frames import decode_frame, parse_record
from monitor.ingest import FramePublisher, SourceError
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.replay import camera_ids, find_clips, replay
from tests.monitor.conftest import RecordReader, TopicFactory


def test_find_clips_reads_the_ped2_test_split_and_filters(ped2_like: Path, tmp_path: Path) -> None:
    clips = find_clips(ped2_like)
    assert [c.name for c in clips] == ["01", "02"] and [len(c) for c in clips] == [24, 24]
    assert clips[0].files[0] == ped2_like / "test" / "01" / "000.jpg"
    assert [c.name for c in find_clips(ped2_like, ["02", "01"])] == ["02", "01"]
    with pytest.raises(SourceError, match=r"clip '07' is not under .*available: 01, 02"):
        find_clips(ped2_like, ["07"])
    with pytest.raises(SourceError, match="data path not found"):
        find_clips(tmp_path / "missing")
    with pytest.raises(SourceError, match="no clips"):
        find_clips(tmp_path)


def test_camera_ids_are_numbered_from_one() -> None:
    assert camera_ids(3, "lab") == ["lab-1", "lab-2", "lab-3"]
    with pytest.raises(ValueError, match="--cameras"):
        camera_ids(0)
    with pytest.raises(ValueError, match="--camera-prefix"):
        camera_ids(1, "bad prefix")


def test_two_cameras_replay_two_clips_and_map_back_to_clip_frames(
    ped2_like: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic(partitions=2)
    producer = make_producer(kafka_settings)
    try:
        report = replay(
            find_clips(ped2_like), FramePublisher(producer, topic), fps=500, cameras=2, progress=False
        )
    finally:
        producer.close()
    assert report.cameras == ["replay-1", "replay-2"] and len(report.sent) == 96
    # 48 ticks at 500 fps: about 0.1 s, not a burst and not real time.
    assert 0.09 <= report.seconds < 5
    mapping = report.frame_map()
    assert mapping[("replay-2", 0)] == ("01", 0) and mapping[("replay-1", 47)] == ("02", 23)

    records = read_records(topic, 96)
    assert len(records) == 96
    for camera in report.cameras:
        frames = [parse_record(r) for r in records if r.key == camera.encode()]
        assert [f.frame_index for f in frames] == list(range(48))
        for frame in frames:
            clip, number = mapping[(frame.camera_id, frame.frame_index)]
            # Dataset JPEGs are sent as they are, so the payload is the file itself.
            assert frame.payload == (ped2_like / "test" / clip / f"{number:03d}.jpg").read_bytes()
    # Both cameras of one tick share the capture time, like cameras filming together.
    first_ticks = [parse_record(r) for r in records if parse_record(r).frame_index == 0]
    assert len(first_ticks) == 2 and first_ticks[0].capture_ts_ns == first_ticks[1].capture_ts_ns


def test_a_clip_gap_pauses_between_clips_so_that_the_cut_is_a_capture_gap(
    ped2_like: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    topic = new_topic()
    producer = make_producer(kafka_settings)
    try:
        publisher = FramePublisher(producer, topic)
        with pytest.raises(ValueError, match="--clip-gap must be 0 or more"):
            replay(find_clips(ped2_like), publisher, clip_gap_seconds=-1, progress=False)
        report = replay(find_clips(ped2_like), publisher, fps=500, clip_gap_seconds=0.6, progress=False)
    finally:
        producer.close()
    frames = [parse_record(r) for r in read_records(topic, 48)]
    assert [f.frame_index for f in frames] == list(range(48))
    steps = np.diff([f.capture_ts_ns for f in frames]) / 1e9
    assert steps[23] >= 0.6, "no pause between clip 01 (frames 0-23) and clip 02"
    assert np.delete(steps, 23).max() < 0.3 and report.seconds >= 0.6


def test_videos_and_other_image_formats_are_encoded(
    tmp_path: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    data = tmp_path / "clips"
    (data / "bmp-clip").mkdir(parents=True)
    frames = [np.full((40, 56), 20 * i, np.uint8) for i in range(3)]
    for i, image in enumerate(frames):
        cv2.imwrite(str(data / "bmp-clip" / f"{i}.bmp"), image)
    writer = cv2.VideoWriter(str(data / "walk.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (56, 40))
    for image in frames:
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    topic = new_topic()
    producer = make_producer(kafka_settings)
    try:
        clips = find_clips(data)
        assert [(c.name, len(c)) for c in clips] == [("bmp-clip", 3), ("walk", 3)]
        report = replay(clips, FramePublisher(producer, topic), fps=1000, progress=False)
    finally:
        producer.close()
    parsed = [parse_record(r) for r in read_records(topic, 6)]
    assert [f.content_type for f in parsed] == ["image/png"] * 3 + ["image/jpeg"] * 3
    decoded = [decode_frame(f, grayscale=True) for f in parsed]
    # BMP frames go as lossless PNG; video frames as JPEG of the same scene.
    assert all(np.array_equal(d, f) for d, f in zip(decoded[:3], frames, strict=True))
    assert all(np.abs(d.astype(int) - f).mean() < 4 for d, f in zip(decoded[3:], frames, strict=True))
    assert [s.clip for s in report.sent] == ["bmp-clip"] * 3 + ["walk"] * 3


def test_cli_replay(
    ped2_like: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    read_records: RecordReader,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic()
    args = ["replay", "--data", str(ped2_like), "--bootstrap", kafka_bootstrap, "--topic", topic]
    manifest = tmp_path / "sent.json"
    options = ["--fps", "1000", "--clips", "02", "--camera-prefix", "ped2", "--manifest", str(manifest)]
    assert main([*args, *options]) == 0
    assert "sent 24 frames of 1 clips as 1 camera(s) (ped2-1..ped2-1)" in capsys.readouterr().out
    records = read_records(topic, 24)
    assert {r.key for r in records} == {b"ped2-1"} and len(records) == 24
    sent = json.loads(manifest.read_text())
    assert sent[5] == {"camera_id": "ped2-1", "frame_index": 5, "clip": "02", "clip_frame": 5}
    assert [parse_record(r).frame_index for r in records] == [s["frame_index"] for s in sent]
    assert main([*args, "--clips", "99"]) == 2
    assert "clip '99' is not under" in capsys.readouterr().err
