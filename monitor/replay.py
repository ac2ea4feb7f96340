"""Replay a dataset into the frames topic as if N live cameras were filming it.

Every camera replays the same clip list, in order, at `fps` (so each camera's scores can be joined
back to the dataset's labels), all cameras ticking together; capture time is send time.
`replay` returns which (camera id, frame index) carries which clip frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_ped2_root
from monitor.frames import sniff_content_type
from monitor.ingest import FramePublisher, Pacer, SourceError, encode_jpeg
from monitor.wire import JPEG, PNG, is_camera_id

VIDEO_JPEG_QUALITY = 95
"""Quality of the JPEGs made from video frames (image files are sent as they are)."""


@dataclass(frozen=True)
class ReplayClip:
    """One clip: a folder's image files in name order, or a video file."""

    name: str
    files: tuple[Path, ...] = ()
    video: Path | None = None

    def __len__(self) -> int:
        if self.video is None:
            return len(self.files)
        capture = cv2.VideoCapture(str(self.video))
        try:
            return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        finally:
            capture.release()

    def encoded_frames(self) -> Iterator[tuple[bytes, str]]:
        """(payload, content type) per frame: JPEG and PNG files as they are, the rest encoded."""
        if self.video is not None:
            capture = cv2.VideoCapture(str(self.video))
            if not capture.isOpened():
                raise SourceError(f"cannot open video {self.video}")
            try:
                while True:
                    ok, image = capture.read()
                    if not ok:
                        return
                    yield encode_jpeg(image, VIDEO_JPEG_QUALITY), JPEG
            finally:
                capture.release()
        for path in self.files:
            data = path.read_bytes()
            content_type = sniff_content_type(data)
            if content_type is None:
                # BMP, TIFF, ...: re-encode losslessly so the model sees the same pixels.
                decoded = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
                if decoded is None:
                    raise SourceError(f"cannot decode image {path}")
                data, content_type = cv2.imencode(".png", decoded)[1].tobytes(), PNG
            yield data, content_type


def _images(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))


def find_clips(data: str | Path, names: Sequence[str] | None = None) -> list[ReplayClip]:
    """The clips of a dataset, in name order.

    Accepts a UCSD Ped2 root (its `test/` clips), a folder of frame folders and/or videos, a single
    frame folder, or a video file. `names` keeps only those clips, in the order given.

    Raises:
        SourceError: the path holds no clips, or a named clip is not there.
    """
    root = Path(data)
    if not root.exists():
        raise SourceError(f"data path not found: {root}")
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceError(f"{root} is not a video file ({', '.join(VIDEO_SUFFIXES)}) nor a folder")
        clips = [ReplayClip(root.stem, video=root)]
    else:
        if is_ped2_root(root):
            root = root / "test"
        clips = [ReplayClip(root.name, files=_images(root))] if _images(root) else []
        for child in sorted(root.iterdir()):
            if child.is_dir() and _images(child):
                clips.append(ReplayClip(child.name, files=_images(child)))
            elif child.is_file() and child.suffix.lower() in VIDEO_SUFFIXES:
                clips.append(ReplayClip(child.stem, video=child))
    if not clips:
        raise SourceError(f"no clips under {root} (expected frame folders or video files)")
    if names:
        by_name = {clip.name: clip for clip in clips}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise SourceError(
                f"clip {missing[0]!r} is not under {root}; available: {', '.join(sorted(by_name))}"
            )
        clips = [by_name[name] for name in names]
    return clips


@dataclass(frozen=True)
class SentFrame:
    """One replayed frame: the record's camera id and frame index, and the clip frame it carried."""

    camera_id: str
    frame_index: int
    clip: str
    clip_frame: int


@dataclass
class ReplayReport:
    """What `replay` sent, in send order."""

    topic: str
    cameras: list[str]
    sent: list[SentFrame] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def frame_map(self) -> dict[tuple[str, int], tuple[str, int]]:
        """(camera id, frame index) -> (clip name, frame number in the clip), to join scores to labels."""
        return {(f.camera_id, f.frame_index): (f.clip, f.clip_frame) for f in self.sent}

    def write_manifest(self, path: str | Path) -> None:
        """Write the sent frames as JSON: a list of {camera_id, frame_index, clip, clip_frame}."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps([asdict(f) for f in self.sent]) + "\n")


def camera_ids(count: int, prefix: str = "replay") -> list[str]:
    """`prefix-1` ... `prefix-N`."""
    if count < 1:
        raise ValueError(f"--cameras must be at least 1, not {count}")
    ids = [f"{prefix}-{i}" for i in range(1, count + 1)]
    if not all(is_camera_id(c) for c in ids):
        raise ValueError(f"--camera-prefix {prefix!r}: camera ids must be chars of [A-Za-z0-9._-]")
    return ids


def _clip_frames(clips: Sequence[ReplayClip]) -> Iterator[tuple[str, int, bytes, str]]:
    for clip in clips:
        for number, (payload, content_type) in enumerate(clip.encoded_frames()):
            yield clip.name, number, payload, content_type


def replay(
    clips: Sequence[ReplayClip],
    publisher: FramePublisher,
    *,
    fps: float = 10.0,
    cameras: int = 1,
    camera_prefix: str = "replay",
    start_index: int = 0,
    clip_gap_seconds: float = 0.0,
    progress: bool = True,
) -> ReplayReport:
    """Send every clip, in order, as each of `cameras` cameras at `fps` frames per second each; flush.

    Frame indices count up from `start_index` across clips. Capture time is send time. Each camera
    reads (and decodes, for videos) the clips itself. Ctrl-C ends it cleanly: what was sent is
    flushed and reported (`interrupted`).

    Consecutive clips are a cut, which a motion model paired across it reads as motion everywhere:
    `clip_gap_seconds` pauses that long before each clip after the first, so that the service, whose
    `intake.motion_max_gap_seconds` it exceeds, scores the clip's first frame without motion.

    Raises:
        SourceError, KafkaUnavailableError, PublishError.
    """
    if clip_gap_seconds < 0:
        raise ValueError(f"--clip-gap must be 0 or more seconds, not {clip_gap_seconds}")
    ids = camera_ids(cameras, camera_prefix)
    pacer = Pacer(fps)
    streams = {camera: _clip_frames(clips) for camera in ids}
    report = ReplayReport(topic=publisher.topic, cameras=ids)
    total = sum(len(clip) for clip in clips) * cameras
    index = start_index
    started = time.monotonic()
    try:
        with tqdm(total=total, unit="frame", desc="replay", disable=not progress) as bar:
            while True:
                # Read every camera's next frame before waiting, so that the last tick is not waited for.
                due = [
                    (camera, frame) for camera in ids if (frame := next(streams[camera], None)) is not None
                ]
                if not due:
                    break
                if clip_gap_seconds > 0 and index > start_index and due[0][1][1] == 0:
                    time.sleep(clip_gap_seconds)  # every camera starts its next clip on this tick
                time.sleep(pacer.delay(time.monotonic()))
                pacer.sent(time.monotonic())
                capture_ts_ns = time.time_ns()
                for camera, (clip, number, payload, content_type) in due:
                    publisher.send(camera, payload, content_type, index, capture_ts_ns)
                    report.sent.append(SentFrame(camera, index, clip, number))
                    bar.update()
                index += 1
    except KeyboardInterrupt:
        report.interrupted = True  # flush and report what was sent
    publisher.flush()
    report.seconds = time.monotonic() - started
    return report
