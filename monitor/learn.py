"""Learning a camera's scene model from its own stream: what `anomon learn` does.

1. Read the operators' verdicts on the camera's alerts from the feedback topic: the frames of an
   alert marked `real` are left out; those of a `false_alarm` stay in, as normal footage.
2. Read the camera's frames from the frames topic, from the earliest record or a given time, to the
   end the topic had when learning started (or, following it, until there is enough). The consumer
   is learning's own and is assigned the partitions itself, so a running service's group is never
   joined, rebalanced or committed for.
3. Keep the frames at the model's frame rate (`input.fps`) as runs of consecutive frames
   (`RunSampler`): a motion model learns from pairs one frame interval apart, so a capture gap, a
   left-out alert or an unreadable frame ends a run, and frames of a faster camera between the kept
   ones are skipped. Unreadable frames are counted and skipped.
4. Train on the footage but the segments spread over it that `model.pipeline.split_holdout` holds
   out (`train.holdout_fraction`), calibrate on those,
   export for the backend that will serve it, and add the result to the model store. Everything is
   written in a temporary folder first; the store's add is atomic, so an interrupted learn leaves the
   store as it was.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from tqdm import tqdm

from model.calibration import MIN_FRAMES as MIN_CALIBRATION_FRAMES
from model.config import ExperimentConfig, InputSpec
from model.data import Clip, holdout_size, resize_frame, split_holdout
from monitor.frames import MAX_PIXELS, FrameError, decode_frame, parse_record
from monitor.kafka_client import ConsumerSettings, KafkaSettings, KafkaUnavailableError, make_consumer
from monitor.store import ModelStore, StoreEntry
from monitor.wire import FeedbackMessage, Topics, WireError, decode, format_ts, is_camera_id

Precision = Literal["fp32", "fp16", "int8"]
T = TypeVar("T")

_POLL_MS = 500
_MAX_POLL_RECORDS = 500
_CAMERAS_NAMED = 8  # other cameras named in the message when the camera has no frames at all


class FootageError(ValueError):
    """Too little usable footage of the camera to learn from; the message says how much is needed."""


# --- what to read ---------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> int | None:
    """`--since`: None for `earliest`, else Unix epoch ms.

    Accepts `earliest`, a duration back from now (`90s`, `30m`, `2h`, `7d`) or an ISO 8601 time
    (UTC unless it gives an offset), e.g. `2026-11-22T08:00:00Z`.

    Raises:
        ValueError: anything else (one line with the accepted forms).
    """
    text = text.strip()
    if text == "earliest":
        return None
    now = now or dt.datetime.now(dt.UTC)
    duration = _DURATION.fullmatch(text)
    if duration:
        at = now - dt.timedelta(seconds=float(duration[1]) * _UNIT_SECONDS[duration[2]])
    else:
        try:
            at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--since {text!r}: give earliest, a duration back from now (90s, 30m, 2h, 7d) "
                "or an ISO 8601 time such as 2026-11-22T08:00:00Z"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
    return int(at.timestamp() * 1000)


def minimum_frames(cfg: ExperimentConfig) -> int:
    """The least footage (frames at the model's rate) training and calibration can work with.

    The hold-out (`model.pipeline.holdout_size`) needs MIN_CALIBRATION_FRAMES frames, and what is left
    one training batch (`train.batch_size`); without a hold-out, calibration uses the training frames.
    """
    fraction, batch = cfg.train.holdout_fraction, cfg.train.batch_size
    if fraction <= 0:
        return max(batch, MIN_CALIBRATION_FRAMES)
    total = batch + MIN_CALIBRATION_FRAMES
    while (
        holdout_size(total, fraction) < MIN_CALIBRATION_FRAMES
        or total - holdout_size(total, fraction) < batch
    ):
        total += 1
    return total


def target_frames(frames: int | None, minutes: float | None, spec: InputSpec) -> int:
    """`--frames N` or `--minutes M` as frames at the model's rate (default: 5 minutes)."""
    if frames is not None and minutes is not None:
        raise ValueError("give --frames or --minutes, not both")
    if frames is not None:
        if frames < 1:
            raise ValueError(f"--frames must be at least 1, not {frames}")
        return frames
    minutes = 5.0 if minutes is None else minutes
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, not {minutes:g}")
    return max(1, round(minutes * 60 * spec.fps))


# --- operators' verdicts --------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertVerdict:
    """An operator's latest verdict on one alert, over its capture-time range (Unix epoch ns)."""

    alert_id: UUID
    verdict: str
    start_ns: int
    end_ns: int


class _Ranges:
    """Sorted, merged capture-time ranges; `contains` is a binary search."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [r[0] for r in merged]
        self._ends = [r[1] for r in merged]

    def contains(self, ts_ns: int) -> bool:
        i = bisect.bisect_right(self._starts, ts_ns) - 1
        return i >= 0 and ts_ns <= self._ends[i]


@dataclass
class Feedback:
    """The operators' verdicts on one camera's alerts (topic `anomon.feedback`).

    An alert's latest verdict counts (an operator may change their mind). An alert still open when it
    was judged (`alert_end_ts` null) is taken to run until the verdict was given.
    """

    verdicts: list[AlertVerdict] = field(default_factory=list)
    unreadable: int = 0  # feedback records that are not anomon.feedback/1 messages

    def __post_init__(self) -> None:
        self._real = _Ranges((v.start_ns, v.end_ns) for v in self.verdicts if v.verdict == "real")
        self._false = _Ranges((v.start_ns, v.end_ns) for v in self.verdicts if v.verdict == "false_alarm")

    @classmethod
    def from_messages(cls, messages: Iterable[FeedbackMessage], unreadable: int = 0) -> Feedback:
        """Keep each alert's latest verdict (by `ts`; on a tie the one read last)."""
        latest: dict[UUID, FeedbackMessage] = {}
        for message in messages:
            seen = latest.get(message.alert_id)
            if seen is None or message.ts >= seen.ts:
                latest[message.alert_id] = message
        verdicts = [
            AlertVerdict(
                alert_id=m.alert_id,
                verdict=m.verdict,
                start_ns=_ns(m.alert_start_ts),
                end_ns=_ns(m.alert_end_ts or m.ts) + 999_999,  # wire times are floored to the ms
            )
            for m in latest.values()
        ]
        return cls(verdicts, unreadable)

    def count(self, verdict: str) -> int:
        return sum(1 for v in self.verdicts if v.verdict == verdict)

    def is_real(self, ts_ns: int) -> bool:
        """Whether a frame captured at `ts_ns` lies inside an alert marked real."""
        return self._real.contains(ts_ns)

    def is_false_alarm(self, ts_ns: int) -> bool:
        """Whether a frame captured at `ts_ns` lies inside an alert marked a false alarm (and no real one)."""
        return self._false.contains(ts_ns) and not self._real.contains(ts_ns)


def _ns(value: dt.datetime) -> int:
    return round(value.timestamp() * 1000) * 1_000_000


def read_feedback(consumer: KafkaConsumer, topic: str, camera: str) -> Feedback:
    """The verdicts on `camera`'s alerts on the feedback topic, as far as it goes now (no topic: none)."""
    messages: list[FeedbackMessage] = []
    unreadable = 0
    for record in topic_records(consumer, topic, since_ms=None, follow=False, missing_ok=True):
        if record.key is not None and record.key != camera.encode():
            continue
        try:
            message = decode(record.value or b"")
        except WireError:
            unreadable += 1
            continue
        if not isinstance(message, FeedbackMessage):
            unreadable += 1
        elif message.camera_id == camera:
            messages.append(message)
    return Feedback.from_messages(messages, unreadable)


# --- reading a topic ------------------------------------------------------------------------------


def topic_records(
    consumer: KafkaConsumer,
    topic: str,
    since_ms: int | None,
    follow: bool,
    missing_ok: bool = False,
) -> Iterator[Any]:
    """Every record of `topic` from `since_ms` (None: the earliest) to the end it has now (or on, live).

    The consumer is assigned every partition itself: no group is joined and nothing is committed.
    A partition's end is the larger of its listed end offset and the high watermark of its first fetch
    (Tansu lists the start of its last record batch as the end).

    Raises:
        ValueError: the topic does not exist (unless `missing_ok`: then nothing is read).
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        if missing_ok:
            return
        raise ValueError(f"topic {topic} not found: check --topic and --bootstrap")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.resume(*tps)  # a partition assigned again stays paused from the last read
    consumer.seek_to_beginning(*tps)
    if since_ms is not None:
        for tp, found in consumer.offsets_for_times({tp: since_ms for tp in tps}).items():
            if found is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found.offset)
    ends: dict[TopicPartition, int] = dict(consumer.end_offsets(tps))
    fetched: set[TopicPartition] = set()

    def end(tp: TopicPartition) -> int:
        if tp not in fetched and consumer.highwater(tp) is not None:
            ends[tp] = max(ends[tp], consumer.highwater(tp))
            fetched.add(tp)
        return ends[tp]

    reading = set(tps)
    while reading:
        if not follow:
            for tp in list(reading):
                if consumer.position(tp) >= end(tp):
                    reading.discard(tp)
                    consumer.pause(tp)
            if not reading:
                return
        for tp, records in consumer.poll(timeout_ms=_POLL_MS).items():
            for record in records:
                if follow or record.offset < end(tp):
                    yield record


# --- keeping frames at the model's rate -----------------------------------------------------------


class RunSampler(Generic[T]):
    """Picks a camera's frames one model frame interval apart, as runs of consecutive frames.

    Frames are offered in the order the camera sent them, with their capture times. After a kept
    frame, the next one kept is the frame captured closest to one interval later, among those
    between half an interval and one and a half intervals later (on a tie the earlier one: motion read
    a little slow rather than fast); the others are skipped (a camera faster than the model's rate). A
    frame more than one and a half intervals after the last kept one, or before it by as much (the
    camera's clock was reset), starts a new run: there is no frame the model could pair it with.
    Pure logic: a kept frame is known only once a later frame is offered, so `offer` returns the
    frames it decided on and `finish` the last one.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.interval_ns = round(1e9 / fps)
        self.skipped = 0  # frames between kept ones, and repeated or slightly reordered ones
        self._last_ns: int | None = None
        self._pending: tuple[T, int] | None = None

    def offer(self, item: T, ts_ns: int) -> list[tuple[T, int, bool]]:
        """Offer the camera's next frame; returns the frames now kept: (item, capture ns, starts a run)."""
        kept: list[tuple[T, int, bool]] = []
        low, high = self.interval_ns // 2, 3 * self.interval_ns // 2
        while True:
            if self._last_ns is None:
                self._last_ns = ts_ns
                kept.append((item, ts_ns, True))
                return kept
            since = ts_ns - self._last_ns
            if -high <= since < low:
                self.skipped += 1
                return kept
            if low <= since <= high:
                pending = self._pending
                if pending is None or abs(since - self.interval_ns) < abs(
                    pending[1] - self._last_ns - self.interval_ns
                ):
                    if pending is not None:
                        self.skipped += 1
                    self._pending = (item, ts_ns)
                    return kept
                kept.append(self._take_pending())  # the pending frame was the closest: keep it, go on
                continue
            if self._pending is not None:
                kept.append(self._take_pending())
                continue
            self._last_ns = ts_ns  # a gap: this frame starts a new run
            kept.append((item, ts_ns, True))
            return kept

    def finish(self) -> list[tuple[T, int, bool]]:
        """The frame still waiting to be kept, if any."""
        return [self._take_pending()] if self._pending is not None else []

    def _take_pending(self) -> tuple[T, int, bool]:
        assert self._pending is not None
        item, ts_ns = self._pending
        self._last_ns, self._pending = ts_ns, None
        return item, ts_ns, False


# --- the footage ----------------------------------------------------------------------------------


@dataclass
class Run:
    """Consecutive frames of the camera at the model's rate: model-input frames and capture times."""

    frames: list[np.ndarray] = field(default_factory=list)
    capture_ns: list[int] = field(default_factory=list)

    def clip(self, camera: str, start: int = 0, stop: int | None = None) -> Clip:
        first = self.capture_ns[start]
        name = f"{camera}@{format_ts(dt.datetime.fromtimestamp(first / 1e9, dt.UTC))}"
        return Clip(name=name, frames=np.stack(self.frames[start:stop]))


@dataclass
class Footage:
    """A camera's frames read for learning, and what happened to the others."""

    camera: str
    fps: float
    runs: list[Run] = field(default_factory=list)
    records: int = 0  # the camera's frame records read
    skipped: int = 0  # between kept frames (a faster camera), repeated or reordered
    unreadable: int = 0  # records that are not valid frames, or whose image does not decode
    isolated: int = 0  # frames alone in their run: no neighbour one interval away
    real: int = 0  # frames inside alerts marked real: left out
    other_cameras: set[str] = field(default_factory=set)
    _current: Run | None = field(default=None, repr=False)
    _in_runs: int = field(default=0, repr=False)  # frames in `runs`

    @property
    def frames(self) -> int:
        """Frames kept: those in runs of two or more (a lone frame has no motion to learn from)."""
        current = len(self._current.frames) if self._current is not None else 0
        return self._in_runs + (current if current >= 2 else 0)

    def add(self, frame: np.ndarray, capture_ns: int, starts_run: bool) -> None:
        if starts_run or self._current is None:
            self.end_run()
            self._current = Run()
        self._current.frames.append(frame)
        self._current.capture_ns.append(capture_ns)

    def end_run(self) -> None:
        if self._current is not None:
            if len(self._current.frames) >= 2:
                self.runs.append(self._current)
                self._in_runs += len(self._current.frames)
            else:
                self.isolated += len(self._current.frames)
        self._current = None

    def false_alarm_frames(self, feedback: Feedback) -> int:
        """Kept frames that lie inside alerts marked false alarms."""
        return sum(feedback.is_false_alarm(ts) for run in self.runs for ts in run.capture_ns)

    def split(self, fraction: float) -> tuple[list[Clip], list[Clip]]:
        """Clips to train on, and the held-out segments to calibrate on (`split_holdout` over the runs
        in capture order). Call it once every run has ended (`end_run`)."""
        return split_holdout([run.clip(self.camera) for run in self.runs], fraction)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def collect_footage(
    consumer: KafkaConsumer,
    topic: str,
    camera: str,
    spec: InputSpec,
    target: int,
    feedback: Feedback,
    since_ms: int | None = None,
    follow: bool = False,
    progress: bool = True,
) -> Footage:
    """Read `camera`'s frames until `target` frames at the model's rate are kept, or the topic ends.

    Frames inside alerts marked real are left out (the run breaks there); the others are decoded as
    the service decodes them, resized to the model's input and kept as runs (`RunSampler`).
    """
    footage = Footage(camera=camera, fps=spec.fps)
    sampler: RunSampler[Any] = RunSampler(spec.fps)
    key = camera.encode()
    since_ns = None if since_ms is None else since_ms * 1_000_000
    with tqdm(total=target, desc=f"footage of {camera}", unit="frame", disable=not progress) as bar:
        broken = False  # a kept frame did not decode: the next one cannot be paired across it

        def keep(decided: list[tuple[Any, int, bool]]) -> None:
            nonlocal broken
            for record, ts_ns, starts_run in decided:
                try:
                    image = decode_frame(record, MAX_PIXELS, grayscale=not spec.color)
                except FrameError:
                    footage.unreadable += 1
                    broken = True
                    continue
                footage.add(resize_frame(image, spec), ts_ns, starts_run or broken)
                broken = False

        for consumed in topic_records(consumer, topic, since_ms, follow):
            bar.set_postfix(read=footage.records, refresh=False)
            bar.update(min(footage.frames, target) - bar.n)  # redraws at most every 0.1 s
            if consumed.key != key:
                if consumed.key is not None and len(footage.other_cameras) < 1000:
                    footage.other_cameras.add(consumed.key.decode("utf-8", "replace"))
                continue
            footage.records += 1
            try:
                record = parse_record(consumed)
            except FrameError:
                footage.unreadable += 1
                continue
            if since_ns is not None and record.capture_ts_ns < since_ns:
                continue  # a broker that cannot seek by time (Tansu) starts at the earliest record
            if feedback.is_real(record.capture_ts_ns):
                footage.real += 1  # the sampler sees the gap and starts a new run after it
                continue
            keep(sampler.offer(record, record.capture_ts_ns))
            if footage.frames >= target:
                break
        else:
            keep(sampler.finish())
        bar.update(min(footage.frames, target) - bar.n)
    footage.end_run()
    footage.skipped = sampler.skipped
    return footage


def too_little(footage: Footage, target: int, topic: str, since: str) -> str:
    """The one-line refusal when the stream holds less footage than asked for."""
    fps = footage.fps
    if footage.records == 0:
        others = sorted(footage.other_cameras)
        named = ", ".join(others[:_CAMERAS_NAMED]) + (", ..." if len(others) > _CAMERAS_NAMED else "")
        seen = f" (cameras seen: {named})" if others else ""
        return (
            f"no frames of camera {footage.camera} on {topic} since {since}{seen}: check --camera, "
            "--topic and --since"
        )
    hint = ""
    if footage.isolated > footage.frames:
        hint = (
            f"; {footage.isolated} frames were more than 1.5 frame intervals from any other: does the camera "
            f"deliver {fps:g} frames/s (input.fps)?"
        )
    have, need = _duration(footage.frames / fps), _duration(target / fps)
    return (
        f"camera {footage.camera}: {footage.frames} frames at {fps:g} fps ({have}) on {topic} since "
        f"{since}, {target} needed ({need}): let the camera record longer, pass an earlier --since, ask "
        f"for less (--frames, --minutes) or --follow to wait{hint}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --- learning -------------------------------------------------------------------------------------


@dataclass
class LearnReport:
    """What `learn` did."""

    entry: StoreEntry
    footage: Footage
    feedback: Feedback
    false_alarm_frames: int
    fit_frames: int
    holdout_frames: int
    backend: str
    precision: str | None  # None: the checkpoint itself was stored (torch)
    threshold: float
    seconds: float

    def summary(self) -> list[str]:
        """The lines `anomon learn` prints."""
        f, fb = self.footage, self.feedback
        lines = [
            f"read {f.records} frames of camera {f.camera}: kept {f.frames} at {f.fps:g} fps "
            f"({_duration(f.seconds)}) in {_count(len(f.runs), 'run')}; skipped {f.skipped} between kept "
            f"frames, {f.isolated} isolated, {f.unreadable} unreadable",
            f"feedback: alerts marked real: {fb.count('real')}, their {f.real} frames left out; "
            f"false alarms: {fb.count('false_alarm')}, their {self.false_alarm_frames} frames kept as "
            "normal footage"
            + (f"; {fb.unreadable} unreadable feedback records skipped" if fb.unreadable else ""),
            f"trained on {self.fit_frames} frames, calibrated on {self.holdout_frames} held out: threshold "
            f"{self.threshold:.4f}",
        ]
        what = "checkpoint" if self.precision is None else f"{self.precision} export"
        e = self.entry
        lines.append(
            f"added {e.label}: {e.model_name} {e.model_version} ({what} for {self.backend}, weights "
            f"{e.sha256[:12]}) in {self.seconds:.0f} s"
        )
        return lines


def default_version(camera: str, now: dt.datetime | None = None) -> str:
    """`<camera>-<UTC date and time>`, at most 128 characters (the wire's limit on a model version)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{camera[:100]}-{now:%Y-%m-%dT%H%MZ}"


def export_choice(backend: str, precision: Precision | None) -> tuple[str, Precision | None]:
    """The backend that will serve the model ("auto" resolved here) and the export precision for it.

    None: store the checkpoint itself (PyTorch serves it as it is). TensorRT gets FP16, ONNX Runtime
    FP32, unless `precision` says otherwise.
    """
    from model.runtime import Availability, choose_backend

    chosen, _ = choose_backend(backend, Availability.probe())
    if precision is None and chosen != "torch":
        precision = "fp16" if chosen == "tensorrt" else "fp32"
    return chosen, precision


def learn(
    settings: KafkaSettings,
    camera: str,
    store: str | Path,
    cfg: ExperimentConfig,
    *,
    topics: Topics | None = None,
    frames: int | None = None,
    minutes: float | None = None,
    since: str = "earliest",
    follow: bool = False,
    backend: str = "auto",
    precision: Precision | None = None,
    version: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> LearnReport:
    """Learn `camera`'s model from its stream and add it to `store` as the camera's next version.

    Args:
        settings: where Kafka is.
        camera: the camera id (the frames' record key).
        store: the model store folder (created if missing).
        cfg: the model and training config (`anomon train`'s); `input.fps` is the rate kept.
        topics: topic names (the frames and feedback topics are read).
        frames, minutes: how much footage to learn from (default 5 minutes at `input.fps`).
        since: where reading starts (`parse_since`).
        follow: wait for live frames when the topic holds too few, instead of refusing.
        backend: what will serve the model: auto, torch, onnxruntime or tensorrt.
        precision: the export's precision (default: fp16 for TensorRT, fp32 for ONNX Runtime).
        version: the model's version (default `default_version`).
        device: the torch device to train on.
        progress: show progress bars.

    Raises:
        FootageError: less footage than asked for (or than the config needs), one line saying how much.
        ValueError: a bad camera id, --since, --frames or --minutes.
    """
    from model.export import export_artifact
    from model.pipeline import model_inputs, train_clips

    started = time.perf_counter()
    if not is_camera_id(camera):
        raise ValueError(f"--camera {camera!r} is not a camera id: 1 to 128 chars of [A-Za-z0-9._-]")
    if Path(store).exists() and not Path(store).is_dir():
        raise ValueError(f"--store {store} is a file, not a model store folder")
    topics = topics or Topics()
    since_ms = parse_since(since)
    target = target_frames(frames, minutes, cfg.input)
    needed = minimum_frames(cfg)
    if target < needed:
        raise FootageError(
            f"{target} frames is too little for this config: at least {needed} "
            f"({_duration(needed / cfg.input.fps)} at {cfg.input.fps:g} fps), "
            f"{holdout_size(needed, cfg.train.holdout_fraction)} of them held out to calibrate "
            f"(train.holdout_fraction {cfg.train.holdout_fraction:g}); ask for --frames {needed} or more"
        )
    served_by, precision = export_choice(backend, precision)

    consumer = make_consumer(
        settings,
        [],
        ConsumerSettings(group_id=f"anomon-learn.{camera}", max_poll_records=_MAX_POLL_RECORDS),
    )
    try:
        feedback = read_feedback(consumer, topics.feedback, camera)
        footage = collect_footage(
            consumer, topics.frames, camera, cfg.input, target, feedback, since_ms, follow, progress
        )
    except KafkaError as err:
        raise KafkaUnavailableError(
            f"reading from Kafka at {settings.bootstrap_servers} failed ({err.__class__.__name__}: {err}): "
            "check the address (--bootstrap) and that the broker is running"
        ) from err
    finally:
        consumer.close()
    if footage.frames < target:
        raise FootageError(too_little(footage, target, topics.frames, since))
    fit, tail = footage.split(cfg.train.holdout_fraction)
    with tempfile.TemporaryDirectory(prefix="anomon-learn-") as work:
        checkpoint = Path(work) / "checkpoint.safetensors"
        meta = train_clips(
            fit,
            tail,
            checkpoint,
            cfg,
            version=version or default_version(camera),
            device=device,
            source={
                "camera": camera,
                "topic": topics.frames,
                "since": since,
                "fps": cfg.input.fps,
                "runs": len(footage.runs),
                "frames": footage.frames,
                "first_capture": _iso(footage.runs[0].capture_ns[0]),
                "last_capture": _iso(footage.runs[-1].capture_ns[-1]),
                "left_out_real": footage.real,
                "false_alarm_frames": footage.false_alarm_frames(feedback),
            },
        )
        artifact = checkpoint
        if precision is not None:
            artifact = Path(work) / "export"
            calibration = model_inputs(fit, cfg) if precision == "int8" else None
            export_artifact(
                checkpoint,
                artifact,
                precision,
                calibration_inputs=calibration,
                int8_target="tensorrt" if served_by == "tensorrt" else "cpu",
            )
        entry = ModelStore(store, create=True).add(artifact, camera)
    assert meta.calibration is not None
    return LearnReport(
        entry=entry,
        footage=footage,
        feedback=feedback,
        false_alarm_frames=footage.false_alarm_frames(feedback),
        fit_frames=sum(len(c.frames) for c in fit),
        holdout_frames=sum(len(c.frames) for c in tail),
        backend=served_by,
        precision=precision,
        threshold=meta.calibration.threshold,
        seconds=time.perf_counter() - started,
    )


def _iso(ns: int) -> str:
    return format_ts(dt.datetime.fromtimestamp(ns / 1e9, dt.UTC))
