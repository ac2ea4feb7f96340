"""`anomon ingest --cameras FILE`: every camera of a cameras file, published by one supervised process.

Each camera is a `CameraFeed`, a thread that opens its source and publishes its frames
(`monitor.ingest`). Whenever the source fails or ends (a stream cut, a file at its end, a device
unplugged, a path not there yet), the feed counts a restart and opens the source again after a
pause. The pause doubles while the source keeps failing (1 s up to 30 s) and starts over once frames
flow. One camera's trouble never stops the others, and a source that keeps failing the same way is
reported once. The `IngestSupervisor` reads the file again when it changes: new cameras start,
removed ones stop, changed ones restart, and a bad edit is reported while the cameras keep running
as they were.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer
from tqdm import tqdm

from model.config import ConfigError
from monitor.cameras_file import CamerasFile, SourceSettings, load_cameras_file
from monitor.ingest import FramePublisher, ingest, open_source
from monitor.metrics import IngestMetrics

log = logging.getLogger(__name__)

RESTART_BACKOFF = (1.0, 30.0)  # first and longest pause before a source is opened again, seconds
RELOAD_SECONDS = 2.0  # how often the cameras file is checked for changes
STATUS_SECONDS = 60.0  # how often a status line is printed when stderr is not a terminal
STOP_SECONDS = 10.0  # how long a stop waits for the feeds (a blocked stream read) before leaving them

Say = Callable[[str], None]


@dataclass
class FeedStatus:
    """What a feed has done so far (read by the progress line and the summary)."""

    frames: int = 0
    dropped: int = 0
    restarts: int = 0
    streaming: bool = False
    error: str | None = None  # the latest failure, until frames flow again


class CameraFeed:
    """One camera's source published from a thread, opened again with backoff whenever it fails or ends.

    Args:
        camera_id: the record key.
        settings: the camera's source fields from the cameras file.
        producer: shared by every feed (kafka-python's producer is thread-safe).
        topic: the frames topic.
        metrics: where frames, drops and restarts are counted.
        say: where a failure is reported (once per distinct failure).
        backoff: first and longest pause before opening the source again, seconds.
        first_index: frame index of the first frame (a restarted camera keeps counting).
    """

    def __init__(
        self,
        camera_id: str,
        settings: SourceSettings,
        producer: KafkaProducer,
        topic: str,
        metrics: IngestMetrics,
        say: Say,
        backoff: tuple[float, float] = RESTART_BACKOFF,
        first_index: int = 0,
    ) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.say = say
        self.backoff = backoff
        self.next_index = first_index
        self.status = FeedStatus()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{camera_id}", daemon=True)

    def start(self) -> CameraFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the feed to end (it flushes what it sent); `join` waits for it."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the feed's thread; True when it has ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        pause = self.backoff[0]
        said: str | None = None  # the failure reported last: one that repeats is not said again
        said_end = False
        while not self._stop.is_set():
            before = self.status.frames
            try:
                reason, message = self._publish_once()
            except Exception as err:  # whatever one camera's source does stays with that camera
                reason, message = "failed", f"{err}" or err.__class__.__name__
            self.status.streaming = False
            self.metrics.source_up.labels(self.camera_id).set(0)
            if self._stop.is_set():
                break
            flowed = self.status.frames > before
            if flowed:
                pause, said = self.backoff[0], None
            self.status.restarts += 1
            self.metrics.restarts.labels(self.camera_id, reason).inc()
            if reason == "failed":
                self.status.error = message
                if message != said:
                    self.say(
                        f"camera {self.camera_id}: {message}; opening it again in {pause:g} s, then less "
                        f"often while it fails (up to every {self.backoff[1]:g} s)"
                    )
                    said = message
            elif not said_end:
                self.say(
                    f"camera {self.camera_id}: {message}; opening it again, now and whenever it ends "
                    "(counted in anomon_ingest_source_restarts_total)"
                )
                said_end = True
            self._stop.wait(pause)
            if not flowed:
                pause = min(self.backoff[1], pause * 2)

    def _publish_once(self) -> tuple[str, str]:
        """Open the source and publish it to its end (or a stop); the restart reason and what happened.

        Raises:
            Exception: the source or Kafka failed (the caller counts it and tries again).
        """
        source = open_source(self.settings.source)
        self.status.streaming = True
        self.metrics.source_up.labels(self.camera_id).set(1)
        report = ingest(
            source,
            FramePublisher(self.producer, self.topic),
            self.camera_id,
            fps=self.settings.fps,
            resize=self.settings.resize,
            jpeg_quality=self.settings.jpeg_quality,
            start_index=self.next_index,
            progress=False,
            stop=self._stop,
            on_frame=self._counted,
        )
        if report.frames == 0:
            return "failed", f"{source.name} opened but gave no frames"
        return "ended", f"source ended after {report.frames} frames"

    def _counted(self, outcome: str) -> None:
        if self._stop.is_set():
            return  # a stopped camera's series may be gone already: do not bring them back
        if outcome == "sent":
            self.next_index += 1
            self.status.frames += 1
            self.status.error = None
            self.metrics.frames.labels(self.camera_id).inc()
            self.metrics.last_frame.labels(self.camera_id).set(time.time())
        else:
            self.status.dropped += 1
            self.metrics.frames_dropped.labels(self.camera_id).inc()


@dataclass
class IngestSummary:
    """What a supervised ingest did: frames sent and restarts of all cameras it ran."""

    cameras: int = 0
    frames: int = 0
    dropped: int = 0
    restarts: int = 0


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class IngestSupervisor:
    """Runs a `CameraFeed` per camera of a cameras file and follows the file's changes.

    Args:
        path: the cameras file (read now: a bad file fails here, with one line naming the field).
        producer: the Kafka producer every feed shares.
        topic: the frames topic.
        metrics: the ingest metrics.
        say: where feeds and reloads report.
        backoff: a feed's first and longest pause before opening a source again.
        reload_seconds: how often the file is checked for changes.

    Raises:
        ConfigError: the cameras file is missing or has a bad entry.
    """

    def __init__(
        self,
        path: str | Path,
        producer: KafkaProducer,
        topic: str,
        metrics: IngestMetrics,
        say: Say,
        backoff: tuple[float, float] = RESTART_BACKOFF,
        reload_seconds: float = RELOAD_SECONDS,
    ) -> None:
        self.path = Path(path)
        self._stamp = _file_stamp(self.path)
        self.cameras: CamerasFile = load_cameras_file(self.path)
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.say = say
        self.backoff = backoff
        self.reload_seconds = reload_seconds
        self.feeds: dict[str, CameraFeed] = {}
        self._stopping: list[CameraFeed] = []  # feeds removed or replaced, still winding down
        self._summary = IngestSummary()  # totals of the feeds that ended

    def run(self, stop: threading.Event, progress: bool = True) -> IngestSummary:
        """Publish every camera until `stop` is set, then stop the feeds and flush."""
        self._apply(self.cameras)
        if not self.feeds:
            self.say(
                f"no cameras in {self.path} yet; add them under cameras: (the file is read again when "
                "it changes)"
            )
        status = _Progress(progress, self.say)
        checked = time.monotonic()
        try:
            while not stop.wait(0.5):
                if time.monotonic() - checked >= self.reload_seconds:
                    checked = time.monotonic()
                    self.reload_if_changed()
                self._reap()
                status.show(self.summary(), self._counts())
        finally:
            status.close()
            self._stop_all()
        return self.summary()

    def reload_if_changed(self) -> bool:
        """Read the cameras file again if it changed; True when the cameras were updated from it."""
        stamp = _file_stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            cameras = load_cameras_file(self.path)
        except ConfigError as err:
            self.say(f"{err}; the cameras keep running as they were until the file is fixed")
            return False
        self._apply(cameras)
        return True

    def summary(self) -> IngestSummary:
        """Totals over every feed run so far."""
        feeds = [*self.feeds.values(), *self._stopping]
        return IngestSummary(
            cameras=len(self.feeds),
            frames=self._summary.frames + sum(f.status.frames for f in feeds),
            dropped=self._summary.dropped + sum(f.status.dropped for f in feeds),
            restarts=self._summary.restarts + sum(f.status.restarts for f in feeds),
        )

    def _apply(self, cameras: CamerasFile) -> None:
        """Start, stop and restart feeds so that they match `cameras`."""
        for camera_id in [c for c in self.feeds if c not in cameras.sources]:
            self._retire(self.feeds.pop(camera_id))
            self.metrics.forget_camera(camera_id)
            self.say(f"camera {camera_id}: removed from {self.path.name}; stopped")
        for camera_id, settings in cameras.sources.items():
            running = self.feeds.get(camera_id)
            if running is not None and running.settings == settings:
                continue
            first_index = 0
            if running is not None:
                self._retire(running)
                first_index = running.next_index
                self.say(f"camera {camera_id}: changed in {self.path.name}; opening its source again")
            else:
                self.metrics.track_camera(camera_id)
            self.feeds[camera_id] = CameraFeed(
                camera_id,
                settings,
                self.producer,
                self.topic,
                self.metrics,
                self.say,
                self.backoff,
                first_index,
            ).start()
        self.cameras = cameras
        self.metrics.cameras.set(len(self.feeds))

    def _reap(self) -> None:
        """Keep the totals of the stopped feeds that have ended, and let them go."""
        running = []
        for feed in self._stopping:
            if feed.join(0):
                self._summary.frames += feed.status.frames
                self._summary.dropped += feed.status.dropped
                self._summary.restarts += feed.status.restarts
            else:
                running.append(feed)
        self._stopping = running

    def _retire(self, feed: CameraFeed) -> None:
        feed.stop()
        self._stopping.append(feed)

    def _stop_all(self) -> None:
        feeds = [*self.feeds.values(), *self._stopping]
        for feed in feeds:
            feed.stop()
        deadline = time.monotonic() + STOP_SECONDS
        stuck = [f.camera_id for f in feeds if not f.join(max(0.0, deadline - time.monotonic()))]
        if stuck:  # a stream read that blocks; its thread is a daemon and ends with the process
            log.warning("cameras %s did not stop within %.0f s", ", ".join(stuck), STOP_SECONDS)
        self.producer.flush(timeout=STOP_SECONDS)

    def _counts(self) -> tuple[int, int]:
        streaming = sum(1 for f in self.feeds.values() if f.status.streaming)
        return streaming, len(self.feeds) - streaming


class _Progress:
    """A bar of frames sent on a terminal; elsewhere (a container log) a status line every minute."""

    def __init__(self, enabled: bool, say: Say) -> None:
        self.enabled = enabled
        self.say = say
        self.tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(unit="frame", desc="cameras", file=sys.stderr) if self.tty else None
        self._shown = 0
        self._said = time.monotonic()

    def show(self, summary: IngestSummary, counts: tuple[int, int]) -> None:
        streaming, waiting = counts
        text = f"{streaming} streaming, {waiting} waiting to reopen, {summary.restarts} restarts"
        if self.bar is not None:
            self.bar.update(summary.frames - self._shown)
            self._shown = summary.frames
            self.bar.set_postfix_str(text, refresh=False)
        elif self.enabled and time.monotonic() - self._said >= STATUS_SECONDS:
            self._said = time.monotonic()
            self.say(f"{summary.frames} frames sent; {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
