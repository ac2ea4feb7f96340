"""The consume-score-publish service (`anomon run`).

One cycle: poll a micro-batch across cameras, parse and decode it, hand it to a model thread, then
finish the batches the models are done with, oldest first: update each camera's state, publish
scores and alert events, flush, and only then commit their offsets (at least once). So the models
score batch N+1 while batch N is published and committed, and while batch N+2 is polled and decoded
(`batching.overlap`; off, each batch is finished before the next is polled). With several model
workers (`model.workers`; auto: two on a CPU), up to that many batches are scored at once, and a
batch that finds models idle is split between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from model.config import ConfigError
from model.data import resize_frame
from model.runtime import Availability, choose_backend, open_runtime
from model.runtime.base import Runtime
from monitor import wire
from monitor.camera import AlertEvent, CameraState
from monitor.config import ModelSettings, ServiceConfig
from monitor.frames import ConsumedRecord, FrameError, FrameRecord, dead_letter, decode_frame, parse_record
from monitor.kafka_client import create_topics, make_consumer, make_producer
from monitor.localize import MapScale, Region
from monitor.metrics import HealthServer, ServiceMetrics
from monitor.pairing import MotionPairs
from monitor.snapshot import SnapshotError

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200  # how long an idle poll waits, so a stop request is seen promptly
BUSY_POLL_MS = 5  # poll slices while the model works: gather the next batch, notice when it is done
RETRY_BACKOFF = (0.5, 10.0)  # first and longest pause after a Kafka error, seconds
BROKER_CHECK_SECONDS = 2.0  # while idle, how often to ask the brokers whether they are still there
BROKER_CHECK_TIMEOUT_MS = 5000
STALL_SECONDS = 15.0  # records waiting but none polled for this long: the consumer is reconnected
STALL_MAX_SECONDS = 600.0  # a reconnect that did not help doubles the wait before the next, up to this
CONCURRENT_BACKENDS = ("onnxruntime", "torch")  # runtimes whose calls may run on several threads at once
# `model.workers: auto` on a CPU. Measured on 2 cores (benchmarks/results/stream.md and
# stream_repeat.md): ONNX Runtime with 2 intra-op threads keeps ~1.35 cores busy; two workers of one
# thread each were the faster service in every round (121-155 against 98-142 frames/s).
AUTO_CPU_WORKERS = 2
HOUSEKEEPING_SECONDS = 10.0  # how often reference cycles are collected and freed pages handed back


@dataclass(frozen=True)
class ModelPlan:
    """How the model runs: `workers` batches at once, each call on `threads` CPU threads."""

    workers: int
    threads: int | None  # None: the backend's default


def plan_model(
    settings: ModelSettings, have: Availability | None = None, cores: int | None = None
) -> ModelPlan:
    """Resolve `model.workers: auto` (and, with it, unset threads) for this machine.

    auto is 1 on a GPU (TensorRT, or a CUDA device) and for backends that cannot be called from
    several threads; on a CPU with at least AUTO_CPU_WORKERS cores it is AUTO_CPU_WORKERS, each with
    an equal share of the cores unless `model.threads` says otherwise. A number is taken as given.
    """
    if settings.workers != "auto":
        return ModelPlan(settings.workers, settings.threads)
    have = have or Availability.probe()
    cores = cores or len(os.sched_getaffinity(0))
    backend, _ = choose_backend(settings.backend, have)
    if settings.device:
        on_gpu = settings.device.startswith("cuda")
    else:  # as open_runtime chooses: a GPU when the backend has one
        on_gpu = {"torch": have.cuda, "onnxruntime": have.onnxruntime_cuda}.get(backend, True)
    if on_gpu or backend not in CONCURRENT_BACKENDS or cores < AUTO_CPU_WORKERS:
        return ModelPlan(1, settings.threads)
    return ModelPlan(AUTO_CPU_WORKERS, settings.threads or cores // AUTO_CPU_WORKERS)


def _split(records: list[Any], parts: int) -> list[list[Any]]:
    """Up to `parts` contiguous slices of near-equal size (polled order kept), none empty."""
    parts = max(1, min(parts, len(records)))
    bounds = [round(i * len(records) / parts) for i in range(parts + 1)]
    return [records[a:b] for a, b in itertools.pairwise(bounds)]


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


@dataclass
class Frame:
    """A decoded frame on its way through one cycle."""

    consumed: ConsumedRecord
    record: FrameRecord
    image: np.ndarray  # the decoded source frame (kept for the alert snapshot)
    model_input: np.ndarray  # uint8 [C, H, W] at the model's input size, previous frame stacked
    received: float  # time.time() when polled


@dataclass
class Inference:
    """A batch back from the model thread: per frame its raw score and map, or why it has none."""

    frames: list[Frame]
    started: float  # time.time() when the batch went into the model
    seconds: float  # the model's time on the batch (with the frame-by-frame retries)
    outputs: list[tuple[float, np.ndarray] | FrameError]
    batch_error: str | None = None  # the batch call failed and was retried frame by frame


@dataclass
class InFlight:
    """Polled records whose outputs are not yet flushed and whose offsets are not yet committed."""

    records: list[Any]
    inference: Future[Inference] | None  # None: no frame of these records reached the model

    @property
    def scored(self) -> bool:
        """The model is done with these records (or they never needed it)."""
        return self.inference is None or self.inference.done()


@dataclass
class Peak:
    """The frame to draw an alert's snapshot from."""

    image: np.ndarray
    anomaly_map: np.ndarray
    regions: tuple[Region, ...]


@dataclass
class ServiceStats:
    """Totals of one run (also in the metrics)."""

    consumed: int = 0
    processed: int = 0
    dropped: int = 0
    dead_letters: int = 0
    alerts: int = 0
    cycles: int = 0
    partitions: set[int] = field(default_factory=set)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _wire_regions(regions: tuple[Region, ...]) -> list[wire.Region]:
    return [wire.Region(bbox=r.bbox, score=float(r.score)) for r in regions]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: MonitorService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.service.revocations += 1
        self.service.release(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.service.assigned = set(assigned)
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))


class MonitorService:
    """Consumes frames, scores them with a runtime, publishes scores, alerts and dead letters.

    Args:
        cfg: the service configuration.
        runtime: an opened runtime (its model's calibration normalizes scores).
        metrics: where to count; a fresh registry by default.
    """

    def __init__(self, cfg: ServiceConfig, runtime: Runtime, metrics: ServiceMetrics | None = None) -> None:
        served = runtime.model
        if served.calibration is None:
            raise ValueError("the model has no calibration: run `anomon calibrate` on its checkpoint first")
        self.cfg = cfg
        self.runtime = runtime
        self.metrics = metrics or ServiceMetrics()
        self.stats = ServiceStats()
        self.model_info = wire.ModelInfo(
            name=served.name, version=served.version, backend=runtime.backend, precision=served.precision
        )
        self.metrics.model_info.labels(served.name, served.version, runtime.backend, served.precision).set(1)
        self.score_scale = served.calibration
        # Models without a map calibration: the frame calibration is in the same standardized units.
        self.map_scale = MapScale.from_calibration(served.map_calibration or served.calibration)
        self.spec = served.config.input
        self.cameras: dict[str, CameraState] = {}
        self.camera_partition: dict[str, TopicPartition] = {}
        # The earlier frames of each camera that its next frames may be paired with, for motion.
        self.motion = MotionPairs(cfg.intake.motion_max_gap_seconds, cfg.intake.motion_interval_seconds)
        self.peaks: dict[str, Peak] = {}
        self.assigned: set[TopicPartition] = set()
        self.stop_requested = threading.Event()
        self.healthy = True  # False while Kafka errors are being retried
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._pending: list[Any] = []  # send futures of this cycle
        self._end_to_end: list[float] = []  # capture times of this cycle's scores, observed once flushed
        self._pool = ThreadPoolExecutor(cfg.intake.decode_workers, thread_name_prefix="anomon-decode")
        self.workers = plan_model(cfg.model).workers
        if cfg.model.workers == "auto" and (
            runtime.backend not in CONCURRENT_BACKENDS or runtime.device != "cpu"
        ):
            self.workers = 1  # a runtime other than the one planned for (given directly): auto stays safe
        if self.workers > 1 and runtime.backend not in CONCURRENT_BACKENDS:
            raise ConfigError(
                f"field 'model.workers': {self.workers} needs a runtime that scores batches concurrently "
                f"({', '.join(CONCURRENT_BACKENDS)}), not {runtime.backend}; set it to 1"
            )
        # The model threads: every runtime call runs on one of them, never on the main loop (with one
        # worker, as on a GPU, always the same thread: a GPU runtime keeps its context and stream).
        self._model_thread = ThreadPoolExecutor(self.workers, thread_name_prefix="anomon-model")
        # Batches in the models, oldest first, finished (published, committed) in that order.
        self._inflight: deque[InFlight] = deque()
        self.revocations = 0  # partitions revoked so far: records polled before one are void
        self._last_records = time.monotonic()  # when a poll last returned records (or the consumer started)
        self._stall_after = STALL_SECONDS  # grows while reconnects do not bring records back
        # kafka-python raises and catches a KafkaTimeoutError inside every poll that waits in vain; its
        # traceback holds the caller's frames (this cycle's records and decoded frames) in a reference
        # cycle that only a full collection frees. Left to Python's rare full collections, RSS swung
        # between 460 and 600 MB and crept up 15-20% in 30-minute soaks. So every HOUSEKEEPING_SECONDS:
        # a full collection (under a millisecond once `serve` has frozen the start-up objects), then
        # glibc's malloc_trim hands the freed pages back.
        self._trim = _malloc_trim()
        self._housekept = time.monotonic()
        self._checked = 0.0  # time.monotonic() of the last broker check
        self._rewind_owed = False  # a Kafka error left uncommitted frames behind: seek back first

    # --- lifecycle ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Model loaded and partitions assigned (the /readyz answer)."""
        return (
            self._consumer is not None
            and bool(self.assigned)
            and self.healthy
            and not self.stop_requested.is_set()
        )

    def connect(self) -> None:
        """Create the producer and the group consumer (subscribed; partitions come with the first polls)."""
        self._producer = make_producer(self.cfg.kafka, self.cfg.producer)
        self.connect_consumer()

    def connect_consumer(self) -> None:
        """Create the group consumer, subscribed to the frames topic."""
        self._consumer = make_consumer(self.cfg.kafka, [], self.cfg.consumer)
        self._consumer.subscribe([self.cfg.topics.frames], listener=_Rebalance(self))

    def run(self, max_idle_seconds: float | None = None) -> ServiceStats:
        """Run cycles until `stop_requested` is set (or idle max_idle_seconds while assigned), then drain."""
        if self._consumer is None:
            self.connect()
        idle_since = time.monotonic()
        backoff = RETRY_BACKOFF[0]
        try:
            while not self.stop_requested.is_set():
                try:
                    worked = self.cycle()
                    backoff = RETRY_BACKOFF[0]
                except KafkaError as err:
                    # Outputs not acknowledged or the broker gone: nothing of this cycle was committed,
                    # so rewind to the committed offsets and retry after a growing pause.
                    self.healthy = False
                    self.metrics.ready.set(0)
                    log.warning("Kafka error (%s); retrying in %.1f s", err, backoff)
                    self.stop_requested.wait(backoff)
                    backoff = min(RETRY_BACKOFF[1], backoff * 2)
                    self._rewind_owed = True
                    continue
                self.healthy = True
                # Idle time counts only while partitions are assigned: a slow group join is not idleness.
                if worked or not self.assigned:
                    idle_since = time.monotonic()
                elif max_idle_seconds is not None and time.monotonic() - idle_since > max_idle_seconds:
                    break
                self.metrics.ready.set(1 if self.ready() else 0)
        finally:
            self.shutdown()
        return self.stats

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (frames after it are redone).

        Raises:
            KafkaError: the committed offsets cannot be read yet; no cycle may run until they are,
                or frames still buffered after the failed ones would be committed past them.
        """
        assert self._consumer is not None
        self._discard_inflight()
        self._pending.clear()
        self._end_to_end.clear()
        for tp in self.assigned:
            committed = self._consumer.committed(tp, timeout_ms=BROKER_CHECK_TIMEOUT_MS)
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        self._rewind_owed = False

    def _discard_inflight(self) -> None:
        """Forget the batches in the models (their frames are redone from the committed offsets)."""
        while self._inflight:
            inference = self._inflight.popleft().inference
            if inference is not None:
                inference.result()  # the model threads are idle again before anything else runs

    def _drain(self) -> None:
        """Finish the batches in the models, oldest first: publish, flush, commit (a Kafka error leaves
        them to a rewind)."""
        if self._rewind_owed:
            # An earlier batch failed and is not committed: committing a later one would skip it.
            self._discard_inflight()
            return
        while self._inflight:
            try:
                self._finish(self._inflight.popleft())
            except KafkaError:
                self._rewind_owed = True
                raise

    def shutdown(self) -> None:
        """Drain: finish the batches in the models, end open alerts, publish, flush, commit, leave the
        group."""
        self.metrics.ready.set(0)
        if self._producer is not None:
            try:
                self._drain()
            except KafkaError as err:  # left uncommitted: redone by the next owner of its partitions
                log.error("could not publish the batches in flight on shutdown: %s", err)
            try:
                for camera_id in list(self.cameras):
                    self._publish_events(camera_id, self.cameras[camera_id].close())
                self._flush()
            except KafkaError as err:  # the scores are committed already; only the end events are lost
                log.error("could not publish the end events of open alerts on shutdown: %s", err)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        self._pool.shutdown(wait=True)
        self._model_thread.shutdown(wait=True)

    def release(self, partitions: set[TopicPartition]) -> None:
        """Cameras on revoked partitions move to another instance: finish the batches in the models
        (their offsets committed while they are still ours), end their alerts, drop their state."""
        if self._producer is not None:
            try:
                self._drain()
            except KafkaError as err:  # uncommitted: the partitions' next owner redoes these frames
                log.warning("could not finish the batch in flight before a rebalance: %s", err)
        moving = [c for c, tp in self.camera_partition.items() if tp in partitions]
        for camera_id in moving:
            # Close before dropping the state: the end event's snapshot reads it. A camera seen in
            # intake may have no state yet (revoked before any of its frames was scored).
            if camera_id in self.cameras:
                self._publish_events(camera_id, self.cameras[camera_id].close())
            self.cameras.pop(camera_id, None)
            self.camera_partition.pop(camera_id)
            self.motion.forget(camera_id)
            self.peaks.pop(camera_id, None)
        if moving and self._producer is not None:
            self._flush()
        self.assigned -= partitions

    # --- one cycle ---------------------------------------------------------------------------------

    def cycle(self) -> bool:
        """Poll and decode a micro-batch and hand it to the model threads; publish, flush and commit
        the batches they are done with, oldest first. False when nothing came and nothing was in
        flight."""
        if self._rewind_owed:
            self._rewind()
        oldest = self._inflight[0] if self._inflight else None
        records = self._poll_batch(oldest, spare=self._busy_models() < self.workers)
        if not records and not self._inflight:
            self._check_brokers()
            return False
        if records:
            self._last_records = time.monotonic()
            self._stall_after = STALL_SECONDS
        started = time.perf_counter()
        if records:
            self.stats.cycles += 1
            # Models with nothing to do (low load) share the batch, so that its frames wait for the
            # model about as briefly as on one model with all the threads.
            for part in _split(records, self.workers - self._busy_models()):
                frames = self._intake(part)
                inference = self._model_thread.submit(self._run_model, frames) if frames else None
                self._inflight.append(InFlight(part, inference))
        else:  # nothing new came: the oldest batch is scored (or the stream went quiet)
            self._finish(self._inflight.popleft())
        # Then every batch the models are done with, oldest first, and the oldest while more are in
        # flight than there are models (waiting for it).
        while self._inflight and (self._inflight[0].scored or len(self._inflight) > self.workers):
            self._finish(self._inflight.popleft())
        if not self.cfg.batching.overlap:
            self._drain()
        self._update_lag()
        if time.monotonic() - self._housekept > HOUSEKEEPING_SECONDS:
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self._housekept = time.monotonic()
        self.metrics.busy_seconds.inc(time.perf_counter() - started)
        return True

    def _busy_models(self) -> int:
        return sum(not batch.scored for batch in self._inflight)

    def _poll_batch(self, oldest: InFlight | None, spare: bool) -> list[Any]:
        """Up to max_batch records across partitions; returns early once the oldest batch in flight
        is scored, so that it is published without delay.

        Every model busy (not spare): gather until the oldest is scored (its inference is the
        batching window). Otherwise wait for a first record, then at most max_wait_ms for more.
        Records polled before a rebalance are dropped: their partitions restart from the committed
        offsets.
        """
        assert self._consumer is not None
        batching = self.cfg.batching
        got: list[Any] = []
        deadline: float | None = None
        while len(got) < batching.max_batch:
            if oldest is not None and oldest.scored:
                break
            if deadline is None:
                wait_ms = float(IDLE_POLL_MS if oldest is None else BUSY_POLL_MS)
            else:
                wait_ms = max(0.0, (deadline - time.monotonic()) * 1e3)
                wait_ms = wait_ms if oldest is None else min(wait_ms, BUSY_POLL_MS)
            revocations = self.revocations
            polled = self._consumer.poll(timeout_ms=int(wait_ms), max_records=batching.max_batch - len(got))
            if self.revocations != revocations:
                got = []
            for batch in polled.values():
                got.extend(batch)
            if not spare:
                continue
            if got and deadline is None:
                deadline = time.monotonic() + batching.max_wait_ms / 1e3
            if deadline is not None and time.monotonic() >= deadline:
                break
            if deadline is None and oldest is None:
                break  # idle and nothing came
        return got

    def _check_brokers(self) -> None:
        """Raise KafkaError if the brokers are gone: an empty poll cannot tell a quiet stream from a cut link.

        Checked every BROKER_CHECK_SECONDS while idle, and on every idle cycle while recovering, so
        readiness comes back only once the brokers answer.
        """
        assert self._consumer is not None
        now = time.monotonic()
        if not self.assigned or (self.healthy and now - self._checked < BROKER_CHECK_SECONDS):
            return
        self._checked = now
        ends = self._consumer.end_offsets(list(self.assigned), timeout_ms=BROKER_CHECK_TIMEOUT_MS)
        waiting = 0
        for tp, end in ends.items():
            lag = max(0, end - self._consumer.position(tp))
            self.metrics.consumer_lag.labels(str(tp.partition)).set(lag)
            waiting += lag
        if waiting and now - self._last_records > self._stall_after:
            self._reconnect_consumer(waiting, now - self._last_records)

    def _reconnect_consumer(self, waiting: int, quiet_s: float) -> None:
        """Replace a consumer whose polls return nothing while records wait (a client-side stall).

        Seen in 30-minute soaks: positions stopped moving, no error, the lag grew. A fresh consumer
        rejoins the group and resumes from the committed offsets; everything polled before was
        committed, so nothing is skipped or lost. When the broker itself serves no records (the
        embedded broker's fetches come back empty once it holds about 50000 record batches, see
        monitor/broker.py), reconnecting cannot help: each reconnect that brings no records doubles
        the silence tolerated before the next, up to STALL_MAX_SECONDS.
        """
        assert self._consumer is not None
        # A stuck broker is not cured by reconnecting: back off until records come again.
        self._stall_after = min(STALL_MAX_SECONDS, max(STALL_SECONDS, 2 * quiet_s))
        log.warning(
            "consumer stalled: %d records waiting but no poll returned any for %.0f s; reconnecting "
            "(next check after %.0f s without records)",
            waiting,
            quiet_s,
            self._stall_after,
        )
        self.metrics.consumer_reconnects.inc()
        self.release(set(self.assigned))  # as in a rebalance: the partitions may move
        stalled, self._consumer = self._consumer, None
        stalled.close(autocommit=False)
        self.connect_consumer()
        self._last_records = time.monotonic()

    def _intake(self, records: list[Any]) -> list[Frame]:
        """Parse (bad records to the DLQ), drop stale frames in live mode, decode in the pool, and pair
        each frame with an earlier one of its camera for motion (`monitor.pairing`; a frame skipped
        here is reported to it, so that the next is not paired across the skip)."""
        now = time.time()
        intake = self.cfg.intake
        parsed: list[tuple[Any, FrameRecord, bool]] = []  # in record order; False: dropped as stale
        for consumed in records:
            try:
                record = parse_record(consumed, intake.max_frame_bytes)
            except FrameError as err:
                self._dead_letter(consumed, err)
                if consumed.key:  # the record may still name its camera
                    self.motion.skipped(consumed.key.decode("utf-8", "replace"))
                continue
            self.stats.consumed += 1
            self.metrics.frames_consumed.labels(record.camera_id).inc()
            if intake.mode == "live" and now - record.capture_ts_ns / 1e9 > intake.max_frame_age_seconds:
                self.stats.dropped += 1
                self.metrics.frames_dropped.labels(record.camera_id, "stale").inc()
                parsed.append((consumed, record, False))
                continue
            parsed.append((consumed, record, True))

        def decode(item: tuple[Any, FrameRecord, bool]) -> np.ndarray | FrameError | None:
            if not item[2]:
                return None
            try:
                return decode_frame(item[1], intake.max_pixels, grayscale=not self.spec.color)
            except FrameError as err:
                return err

        frames = []
        for (consumed, record, _), image in zip(parsed, self._pool.map(decode, parsed), strict=True):
            if image is None or isinstance(image, FrameError):
                if image is not None:
                    self._dead_letter(consumed, image)
                self.motion.skipped(record.camera_id)
                continue
            current = resize_frame(image, self.spec)
            model_input = current
            if self.spec.motion:
                previous, unpaired = self.motion.pair(record.camera_id, current, record.capture_ts_ns)
                if unpaired is not None:
                    self.metrics.frames_without_motion.labels(record.camera_id, unpaired).inc()
                model_input = np.concatenate([current, previous], axis=0)
            self.camera_partition.setdefault(
                record.camera_id, TopicPartition(consumed.topic, consumed.partition)
            )
            frames.append(Frame(consumed, record, image, model_input, now))
        return frames

    def _run_model(self, frames: list[Frame]) -> Inference:
        """On the model thread: score a batch; a failing batch is retried frame by frame (policy: README)."""
        started, clock = time.time(), time.perf_counter()
        try:
            scores, maps = self.runtime.infer(np.stack([f.model_input for f in frames]))
            outputs: list[tuple[float, np.ndarray] | FrameError] = [
                (float(s), m) for s, m in zip(scores, maps, strict=True)
            ]
            return Inference(frames, started, time.perf_counter() - clock, outputs)
        except Exception as err:
            batch_error = str(err)[:200] or type(err).__name__
        outputs = []
        for frame in frames:
            try:
                score, amap = self.runtime.infer(frame.model_input[None])
                outputs.append((float(score[0]), amap[0]))
            except Exception as err:
                outputs.append(FrameError(wire.Reason.INFERENCE_FAILED, str(err)[:200] or type(err).__name__))
        return Inference(frames, started, time.perf_counter() - clock, outputs, batch_error)

    def _finish(self, inflight: InFlight) -> None:
        """Publish a batch's scores and alert events, flush, then commit its offsets."""
        if inflight.inference is not None:
            self._score(inflight.inference.result())
        self._flush()
        self._commit(inflight.records)

    def _score(self, inference: Inference) -> None:
        frames = inference.frames
        if inference.batch_error is None:
            self.metrics.inference_seconds.observe(inference.seconds)
            self.metrics.batch_size.observe(len(frames))
        else:
            self.metrics.inference_errors.inc()
            log.warning(
                "inference failed on a batch of %d (%s); retried frame by frame",
                len(frames),
                inference.batch_error,
            )
        inference_started = inference.started
        for frame, output in zip(frames, inference.outputs, strict=True):
            if isinstance(output, FrameError):
                self._dead_letter(frame.consumed, output)
                continue
            raw, amap = output
            record = frame.record
            capture = record.capture_ts_ns / 1e9
            camera = self._camera(record.camera_id)
            verdict = camera.update(record.frame_index, capture, raw, amap, frame.image.shape[:2])
            if not verdict.valid:
                self.metrics.inference_errors.inc()
                self._dead_letter(
                    frame.consumed,
                    FrameError(wire.Reason.INVALID_SCORE, f"the model returned {raw} for this frame"),
                )
                continue
            assert verdict.score is not None
            if verdict.new_peak:
                self.peaks[record.camera_id] = Peak(frame.image, amap, verdict.regions)
            published = time.time()
            message = wire.ScoreMessage(
                camera_id=record.camera_id,
                frame_index=record.frame_index,
                capture_ts=wire.datetime_from_ns(record.capture_ts_ns),
                processed_ts=_ts(published),
                score=verdict.score,
                raw_score=raw,
                anomalous=verdict.anomalous,
                regions=_wire_regions(verdict.regions),
                model=self.model_info,
                latency_ms=wire.Latency(
                    queue=max(0.0, (inference_started - capture) * 1e3),
                    inference=inference.seconds * 1e3 / len(frames),
                    end_to_end=max(0.0, (published - capture) * 1e3),
                ),
            )
            self._send(self.cfg.topics.scores, record.camera_id, wire.encode(message))
            self.metrics.queue_seconds.observe(max(0.0, inference_started - capture))
            self.metrics.anomaly_score.labels(record.camera_id).set(verdict.score)
            self.metrics.last_frame_timestamp.labels(record.camera_id).set(capture)
            self.metrics.frames_processed.labels(record.camera_id).inc()
            self.stats.processed += 1
            self._publish_events(record.camera_id, list(verdict.events))
            self.metrics.alerts_active.labels(record.camera_id).set(1 if verdict.anomalous else 0)
            self._end_to_end.append(capture)

    # --- outputs -----------------------------------------------------------------------------------

    def _camera(self, camera_id: str) -> CameraState:
        if camera_id not in self.cameras:
            settings = self.cfg.cameras.for_camera(camera_id)
            self.cameras[camera_id] = CameraState(camera_id, settings, self.score_scale, self.map_scale)
            self.metrics.track_camera(camera_id, settings.on_threshold)
        return self.cameras[camera_id]

    def _publish_events(self, camera_id: str, events: list[AlertEvent]) -> None:
        for event in events:
            snapshot = None
            peak = self.peaks.get(camera_id)
            if peak is not None:
                try:
                    image = self.cameras[camera_id].snapshot(peak.image, peak.anomaly_map, peak.regions)
                    snapshot = wire.Snapshot.from_image("image/jpeg", image) if image else None
                except SnapshotError as err:
                    log.warning("camera %s: snapshot left out: %s", camera_id, err)
            message = wire.AlertMessage(
                type=event.type,
                alert_id=uuid.UUID(event.alert_id),
                camera_id=camera_id,
                start_ts=_ts(event.start_ts),
                end_ts=_ts(event.end_ts) if event.end_ts is not None else None,
                frames=max(1, event.frames),
                peak=wire.AlertPeak(
                    score=float(event.peak.score),
                    frame_index=event.peak.frame_index,
                    ts=_ts(event.peak.ts),
                    regions=_wire_regions(event.peak.regions),
                ),
                snapshot=snapshot,
                model=self.model_info,
            )
            self._send(self.cfg.topics.alerts, camera_id, wire.encode(message))
            if event.type == "start":
                self.stats.alerts += 1
                self.metrics.alerts.labels(camera_id).inc()
            if event.type == "end":
                self.metrics.alerts_active.labels(camera_id).set(0)
                self.peaks.pop(camera_id, None)

    def _send(
        self, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        assert self._producer is not None
        self._pending.append(self._producer.send(topic, key=key.encode(), value=value, headers=headers or []))

    def _dead_letter(self, consumed: ConsumedRecord, error: FrameError) -> None:
        assert self._producer is not None
        letter = dead_letter(consumed, error)
        self._pending.append(
            self._producer.send(
                self.cfg.topics.dead_letters,
                key=letter.key,
                value=letter.value,
                headers=letter.headers,
                timestamp_ms=letter.timestamp_ms,
            )
        )
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(error.reason.value).inc()
        log.info("dead letter %s/%s/%s: %s", consumed.topic, consumed.partition, consumed.offset, error)

    def _flush(self) -> None:
        """Wait until every output of this cycle is acknowledged; raise if one was not."""
        assert self._producer is not None
        # Bounded: with the brokers gone, an unbounded flush would hang the service (and /readyz) for minutes.
        self._producer.flush(timeout=self.cfg.kafka.request_timeout_ms / 1e3)
        failed = [f for f in self._pending if f.failed()]
        self._pending.clear()
        if failed:
            self.metrics.publish_errors.inc()
            raise KafkaError(f"{len(failed)} output records were not acknowledged: {failed[0].exception}")
        now = time.time()
        for capture in self._end_to_end:
            self.metrics.end_to_end_seconds.observe(max(0.0, now - capture))
        self._end_to_end.clear()

    def _commit(self, records: list[Any]) -> None:
        """Commit the next offset after the last record of each partition in this cycle."""
        assert self._consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
            self.stats.partitions.add(r.partition)
        self._consumer.commit(offsets)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for tp in self.assigned:
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(
                    max(0, highwater - self._consumer.position(tp))
                )


def serve(
    cfg: ServiceConfig, max_idle_seconds: float | None = None, on_ready: Callable[[Any], None] | None = None
) -> ServiceStats:
    """Open the runtime, start the HTTP endpoint and run the service until SIGTERM/SIGINT (`anomon run`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter is not the operator's news
    # The model owns the cores: OpenCV's own thread pool on per-frame resizes only competes with it.
    cv2.setNumThreads(1)
    if cfg.model.artifact is None:
        raise ConfigError("field 'model.artifact': no model given; pass --artifact DIR or set it in --config")
    plan = plan_model(cfg.model)
    runtime = open_runtime(
        cfg.model.artifact, cfg.model.backend, device=cfg.model.device, threads=plan.threads
    )
    topics = cfg.topics
    # Output topics get the frames topic's default partitioning; existing topics are left alone.
    create_topics(cfg.kafka, {topics.scores: 1, topics.alerts: 1, topics.dead_letters: 1})
    service = MonitorService(cfg, runtime)
    print(
        f"anomon run: serving {runtime.describe()} with model.workers {service.workers}, "
        f"model.threads {plan.threads or 'the backend default'}",
        file=sys.stderr,
    )
    # Start-up objects (torch, the runtime, ...) never become garbage: keep them out of collections.
    gc.collect()
    gc.freeze()
    http = None
    if cfg.http.enabled:
        http = HealthServer(service.metrics, service.ready, cfg.http.host, cfg.http.port).start()
        host, port = http.address
        print(f"anomon run: metrics on http://{host}:{port}/metrics", file=sys.stderr)
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (tests) signals cannot be hooked: the caller sets stop_requested.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, lambda *_: service.stop_requested.set())
    try:
        service.connect()
        if on_ready is not None:
            on_ready(service)
        return service.run(max_idle_seconds=max_idle_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if http is not None:
            http.stop()
