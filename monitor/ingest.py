"""Camera side: read frames from a video file, an image folder, a stream URL or a device and publish them.

Each frame goes to the frames topic as one JPEG, keyed by the camera id, with every v1 header and
the capture time as the record timestamp (`FramePublisher`), at a steady rate (`Pacer`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from monitor.kafka_client import KafkaUnavailableError
from monitor.wire import JPEG, MAX_FRAME_BYTES, frame_headers, is_camera_id

DEFAULT_FOLDER_FPS = 10.0
"""Rate of an image folder, which has none of its own (UCSD Ped2 was filmed at 10 fps)."""


class SourceError(ValueError):
    """A frame source the user named cannot be read; the message names it and the fix."""


class PublishError(RuntimeError):
    """Frames were not delivered to Kafka; the message gives the count and the first error."""


# --- pacing ---------------------------------------------------------------------------------------


class Pacer:
    """Frame slots at a steady rate, on a clock the caller reads (pure logic, no sleeping).

    A stored source waits `delay(now)` before each frame; a live source drops the frames for which
    `due(now)` is False. Slots stay on a fixed grid, so the average rate is exact; falling more than
    one period behind restarts the grid at `now` rather than sending a burst to catch up.
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"--fps must be positive, not {fps}")
        self.period = 1.0 / fps if fps else 0.0
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before the next frame may go out (0: now)."""
        return 0.0 if self._next is None else max(0.0, self._next - now)

    def due(self, now: float) -> bool:
        """True when a frame arriving at `now` takes the next slot.

        A frame up to half a period early counts, so camera jitter does not drop every other frame.
        """
        return self.delay(now) <= self.period / 2

    def sent(self, now: float) -> None:
        """Book the slot of a frame sent at `now`."""
        if self._next is None or now - self._next > self.period:
            self._next = now
        self._next += self.period


# --- publishing -----------------------------------------------------------------------------------


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 HxW or HxWx3 (BGR) image."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {image.shape} {image.dtype} image as JPEG")
    return buffer.tobytes()


class FramePublisher:
    """Sends encoded frames to the frames topic per wire format v1.

    Sends are asynchronous; `flush()` waits for every acknowledgement and raises if any failed.
    The producer is the caller's to close.
    """

    def __init__(self, producer: KafkaProducer, topic: str, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.producer = producer
        self.topic = topic
        self.max_frame_bytes = max_frame_bytes
        self.sent = 0
        self._errors: list[BaseException] = []

    def send(
        self, camera_id: str, payload: bytes, content_type: str, frame_index: int, capture_ts_ns: int
    ) -> None:
        """Queue one frame; the record timestamp is the capture time in ms.

        Raises:
            ValueError: an invalid camera id or a frame over `max_frame_bytes`.
            KafkaUnavailableError: the record could not be queued (no metadata for the topic, full buffer).
        """
        if not is_camera_id(camera_id):
            raise ValueError(f"camera id {camera_id!r} must be 1 to 128 chars of [A-Za-z0-9._-]")
        if len(payload) > self.max_frame_bytes:
            raise ValueError(
                f"a {len(payload)}-byte frame is over max_frame_bytes ({self.max_frame_bytes}); "
                "use --resize or a lower --jpeg-quality"
            )
        try:
            future = self.producer.send(
                self.topic,
                key=camera_id.encode(),
                value=payload,
                headers=frame_headers(content_type, frame_index, capture_ts_ns),
                timestamp_ms=capture_ts_ns // 1_000_000,
            )
        except KafkaError as err:
            raise KafkaUnavailableError(
                f"cannot send to topic {self.topic}: {err.__class__.__name__}: {err}"
            ) from err
        future.add_errback(self._errors.append)
        self.sent += 1

    def flush(self, timeout_s: float | None = 30.0) -> int:
        """Wait until every queued frame is acknowledged; returns how many were sent in all.

        Raises:
            PublishError: some frames were not delivered.
        """
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as err:
            raise PublishError(
                f"frames to {self.topic} not acknowledged within {timeout_s} s: {err}"
            ) from err
        if self._errors:
            first = self._errors[0]
            raise PublishError(
                f"{len(self._errors)} of {self.sent} frames to {self.topic} were not delivered: "
                f"{first.__class__.__name__}: {first}"
            )
        return self.sent


# --- sources --------------------------------------------------------------------------------------


class FrameSource:
    """Frames of one camera, decoded as uint8 HxW or HxWx3 BGR.

    Attributes:
        name: what the user named (path, URL or device index).
        fps: the source's own frame rate, if it has one.
        live: True for streams and devices (frames come in real time and are dropped, not delayed).
        length: frames in one pass, if known.
    """

    name: str = ""
    fps: float | None = None
    live: bool = False
    length: int | None = None

    def frames(self) -> Iterator[np.ndarray]:
        """One pass over the source."""
        raise NotImplementedError


class ImageFolderSource(FrameSource):
    """The images of a folder in file-name order."""

    def __init__(self, folder: Path) -> None:
        self.name = str(folder)
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        self.length = len(self.files)

    def frames(self) -> Iterator[np.ndarray]:
        for path in self.files:
            # ANYCOLOR keeps grey images grey and always gives 8 bits.
            image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
            if image is None:
                raise SourceError(f"cannot decode image {path}")
            yield image


class CaptureSource(FrameSource):
    """A video file, a stream URL (rtsp://, http://, ...) or a capture device index, via OpenCV."""

    def __init__(self, target: str | int, live: bool) -> None:
        self.name = str(target)
        self.target = target
        self.live = live
        capture = self._open()
        try:
            rate = capture.get(cv2.CAP_PROP_FPS)
            self.fps = rate if np.isfinite(rate) and 0 < rate <= 1000 else None
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.length = count if not live and count > 0 else None
        finally:
            capture.release()

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            kind = "stream" if self.live else "video file"
            raise SourceError(f"cannot open {kind} {self.name}: check the path, URL or device index")
        return capture

    def frames(self) -> Iterator[np.ndarray]:
        capture = self._open()
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield image
        finally:
            capture.release()


def open_source(spec: str) -> FrameSource:
    """The frame source named on the command line: a device index, a URL, an image folder or a video.

    Raises:
        SourceError: nothing readable under that name.
    """
    if spec.isdigit():
        return CaptureSource(int(spec), live=True)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
        return CaptureSource(spec, live=True)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceError(f"{path} is not a video file ({', '.join(VIDEO_SUFFIXES)}) nor an image folder")
        return CaptureSource(str(path), live=False)
    raise SourceError(
        f"source not found: {spec} (expected a video file, an image folder, an rtsp:// or http:// URL, "
        "or a device index such as 0)"
    )


def parse_size(text: str) -> tuple[int, int]:
    """`WxH` -> (width, height)."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})[xX]([1-9][0-9]{0,4})", text.strip())
    if match is None:
        raise ValueError(f"--resize {text!r}: expected WIDTHxHEIGHT, e.g. 640x360")
    return int(match.group(1)), int(match.group(2))


# --- ingest ---------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What `ingest` did: frames sent, live frames dropped to keep the rate, wall time."""

    camera_id: str
    topic: str
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    first_index: int = 0
    interrupted: bool = False


def ingest(
    source: FrameSource,
    publisher: FramePublisher,
    camera_id: str,
    *,
    fps: float | None = None,
    resize: tuple[int, int] | None = None,
    jpeg_quality: int = 90,
    loop: bool = False,
    max_frames: int | None = None,
    start_index: int = 0,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_frame: Callable[[str], None] | None = None,
) -> IngestReport:
    """Publish a source's frames as one camera, paced, and flush.

    Args:
        source: from `open_source`.
        publisher: sends to the frames topic.
        camera_id: the record key.
        fps: frames per second (default: the source's rate, else 10 for image folders). A stored
            source is slowed to it; a live source drops frames above it (default: keeps them all).
        resize: (width, height) to resize every frame to before encoding.
        jpeg_quality: 1 to 100.
        loop: start the source again at its end (a stream: reconnect); frame indices keep counting.
        max_frames: stop after this many frames.
        start_index: frame index of the first frame.
        progress: show a progress bar.
        stop: set it to end the ingest from another thread, as Ctrl-C does.
        on_frame: called with "sent" after each frame is queued and "dropped" for each live frame
            dropped to keep the rate (the supervisor counts them per camera).

    Ctrl-C (or `stop`) ends it cleanly: the frames sent so far are flushed and reported (`interrupted`).

    Raises:
        SourceError, KafkaUnavailableError, PublishError.
    """
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be between 1 and 100, not {jpeg_quality}")
    if not is_camera_id(camera_id):
        raise ValueError(f"--camera {camera_id!r} must be 1 to 128 chars of [A-Za-z0-9._-]")
    if fps is None and source.live:
        rate = None  # a live source keeps its own rate
    else:
        rate = fps or source.fps or (DEFAULT_FOLDER_FPS if isinstance(source, ImageFolderSource) else None)
        if rate is None:
            raise SourceError(
                f"cannot tell the frame rate of {source.name}; set it (--fps, or fps: in a cameras file)"
            )
    pacer = Pacer(rate)
    report = IngestReport(camera_id=camera_id, topic=publisher.topic, first_index=start_index)
    total = max_frames if max_frames is not None else (None if loop else source.length)
    stop = stop or threading.Event()
    counted = on_frame or (lambda outcome: None)
    started = time.monotonic()
    try:
        with tqdm(total=total, unit="frame", desc=camera_id, disable=not progress) as bar:
            for image in _paced(source, pacer, loop, report, stop, counted):
                if max_frames is not None and report.frames >= max_frames:
                    break
                capture_ts_ns = time.time_ns()
                if resize is not None:
                    image = cv2.resize(image, resize, interpolation=cv2.INTER_AREA)
                payload = encode_jpeg(image, jpeg_quality)
                publisher.send(camera_id, payload, JPEG, start_index + report.frames, capture_ts_ns)
                report.frames += 1
                counted("sent")
                bar.update()
    except KeyboardInterrupt:
        report.interrupted = True  # Ctrl-C is how a live ingest ends: flush and report what was sent
    report.interrupted = report.interrupted or stop.is_set()
    publisher.flush()
    report.seconds = time.monotonic() - started
    return report


def _paced(
    source: FrameSource,
    pacer: Pacer,
    loop: bool,
    report: IngestReport,
    stop: threading.Event,
    counted: Callable[[str], None],
) -> Iterator[np.ndarray]:
    """The source's frames in their slots: a stored frame waits for it, a live one without one is
    dropped; ends early once `stop` is set."""
    while not stop.is_set():
        seen = 0
        for image in source.frames():
            seen += 1
            if source.live:
                if not pacer.due(time.monotonic()):
                    report.dropped += 1
                    counted("dropped")
                    continue
            elif stop.wait(pacer.delay(time.monotonic())):
                return
            if stop.is_set():
                return
            pacer.sent(time.monotonic())
            yield image
        if seen == 0 and not source.live:
            raise SourceError(f"no decodable frames in {source.name}")
        if not loop or stop.wait(1.0 if source.live else 0.0):
            return  # a dropped stream waits a second: do not hammer the camera while reconnecting
