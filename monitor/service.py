"""The consume-score-publish service (`anomon run`): the Kafka loop.

One cycle: poll a micro-batch across cameras and start taking it in (`monitor.intake`: parse, then
decode on a thread pool); meanwhile finish the batches the models are done with, oldest first:
update each camera's state (`monitor.cameras`), publish scores and alert events, flush
(`monitor.publishing`), and only then commit their offsets (at least once); then pair the new frames
and hand them to the model threads (`monitor.scoring`). So the models score batch N+1 while batch N
is published and committed, and while batch N+2 is polled and decoded (`batching.overlap`; off,
each batch is finished before the next is polled). With several model
workers (`model.workers`; auto: two on a CPU), up to that many batches are scored at once, and a
batch that finds models idle is split between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from model.config import ConfigError
from model.runtime import Availability, choose_backend, open_runtime
from model.runtime.base import Runtime
from monitor.cameras import Cameras
from monitor.config import ServiceConfig
from monitor.intake import Intake, Intaking
from monitor.kafka_client import (
    KafkaUnavailableError,
    create_topics,
    make_consumer,
    make_producer,
    quiet_kafka_logs,
    wait_for_kafka,
)
from monitor.metrics import HealthServer, ServiceMetrics, ServiceStats
from monitor.publishing import Publisher, offsets_after
from monitor.routing import ModelRouter
from monitor.scoring import Inference, LoadedModel, ModelPlan, ModelWorkers, plan_model, workers_for
from monitor.store import ModelStore
from monitor.webhooks import AlertWebhooks

__all__ = ["ModelPlan", "MonitorService", "ServiceStats", "plan_model", "serve"]

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200  # how long an idle poll waits, so a stop request is seen promptly
BUSY_POLL_MS = 5  # poll slices while the model works: gather the next batch, notice when it is done
RETRY_BACKOFF = (0.5, 10.0)  # first and longest pause after a Kafka error, seconds
BROKER_CHECK_SECONDS = 2.0  # while idle, how often to ask the brokers whether they are still there
BROKER_CHECK_TIMEOUT_MS = 5000
STALL_SECONDS = 15.0  # records waiting but none polled for this long: the consumer is reconnected
STALL_MAX_SECONDS = 600.0  # a reconnect that did not help doubles the wait before the next, up to this
HOUSEKEEPING_SECONDS = 10.0  # how often reference cycles are collected and freed pages handed back
STALL_CHECK_SECONDS = 0.5  # how often cameras are checked for silence
LAG_SECONDS = 1.0  # how often the consumer lag gauges are updated while records come


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
class InFlight:
    """Polled records whose outputs are not yet flushed and whose offsets are not yet committed."""

    records: list[Any]
    inferences: list[Future[Inference]]  # one per model among its frames; none: no frame needs one

    @property
    def scored(self) -> bool:
        """The models are done with these records (or they never needed them)."""
        return all(f.done() for f in self.inferences)


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

    def __init__(
        self, cfg: ServiceConfig, models: ModelRouter | Runtime, metrics: ServiceMetrics | None = None
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or ServiceMetrics()
        self.stats = ServiceStats()
        if isinstance(models, Runtime):
            models = ModelRouter.single(LoadedModel.from_runtime(models), self.metrics)
        self.router = models
        if models.fixed is not None:  # a runtime opened already: plan for it
            workers, backend = workers_for(cfg.model, models.fixed.runtime), models.fixed.runtime.backend
        else:
            workers = plan_model(cfg.model).workers
            backend = choose_backend(cfg.model.backend, Availability.probe())[0]
        self.intake = Intake(cfg.intake, self.router.model_for, self.metrics)
        self.cameras = Cameras(cfg.cameras, self.metrics, self.stats, cfg.thumbnails)
        self.models = ModelWorkers(workers, backend)
        self.workers = self.models.workers
        self.webhooks = AlertWebhooks(cfg.webhooks, self.metrics)
        self.publisher: Publisher | None = None
        self.assigned: set[TopicPartition] = set()
        self.stop_requested = threading.Event()
        self.healthy = True  # False while Kafka errors are being retried
        self._consumer: KafkaConsumer | None = None
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
        self._stall_checked = 0.0  # time.monotonic() of the last check for silent cameras
        self._lag_updated = 0.0  # time.monotonic() of the last consumer lag update

    # --- one cycle ---------------------------------------------------------------------------------

    def cycle(self) -> bool:
        """Poll a micro-batch, take it in and hand it to the models; publish, flush and commit the
        batches they are done with, oldest first. False when nothing came and nothing was in flight."""
        if self._rewind_owed:
            self._rewind()
        oldest = self._inflight[0] if self._inflight else None
        records = self._poll_batch(oldest, spare=self._busy_models() < self.workers)
        if not records and not self._inflight:
            self._check_brokers()
            self._end_stalled()
            self.router.poll()
            return False
        started = time.perf_counter()
        if records:
            self._last_records, self._stall_after = time.monotonic(), STALL_SECONDS
            self.stats.cycles += 1
            # Models with nothing to do (low load) share the batch, so that its frames wait for the
            # model about as briefly as on one model with all the threads.
            parts = [
                (part, self.intake.start(part))
                for part in _split(records, self.workers - self._busy_models())
            ]
            self._finish_scored()  # while the new frames decode
            for part, intaking in parts:
                self._inflight.append(self._take_in(part, intaking))
        else:  # nothing new came: the oldest batch is scored (or the stream went quiet)
            self._finish(self._inflight.popleft())
        self._finish_scored()
        if not self.cfg.batching.overlap:
            self._drain()
        self._update_lag()
        self._end_stalled()
        self._housekeep()
        self.router.poll()
        self.metrics.busy_seconds.inc(time.perf_counter() - started)
        return True

    def _finish_scored(self) -> None:
        """Finish every batch the models are done with, oldest first, and the oldest while more are in
        flight than there are models (waiting for it)."""
        while self._inflight and (self._inflight[0].scored or len(self._inflight) > self.workers):
            self._finish(self._inflight.popleft())

    def _take_in(self, records: list[Any], intaking: Intaking) -> InFlight:
        """Intake done (bad records to the dead-letter topic, thumbnails of cameras without a model to the
        thumbnails topic), then the frames to the model threads."""
        assert self.publisher is not None
        taken = self.intake.finish(intaking)
        self.stats.consumed += taken.consumed
        self.stats.dropped += taken.dropped
        self.stats.learning += taken.learning
        for camera_id in self.intake.learning:
            self.cameras.set_status(camera_id, "learning")
        for consumed, error in taken.rejected:
            self.publisher.dead_letter(consumed, error)
        for frame in taken.frames:
            self.cameras.seen(
                frame.record.camera_id, TopicPartition(frame.consumed.topic, frame.consumed.partition)
            )
        learning = taken.learning_frames.values()
        for record in learning:
            self.cameras.seen(record.camera_id, TopicPartition(record.topic, record.partition))
        self.publisher.thumbnails(self.cameras.learning_thumbnails(learning, self.cfg.intake.max_pixels))
        return InFlight(records, self.models.submit(taken.frames) if taken.frames else [])

    def _finish(self, inflight: InFlight) -> None:
        """Publish a batch's scores and alert events, flush, then commit its offsets."""
        assert self.publisher is not None and self._consumer is not None
        for future in inflight.inferences:
            self._publish(future.result())
        self.publisher.flush()
        self._consumer.commit(offsets_after(inflight.records))
        self.stats.partitions.update(r.partition for r in inflight.records)

    def _publish(self, inference: Inference) -> None:
        assert self.publisher is not None
        if inference.batch_error is None:
            self.metrics.inference_seconds.observe(inference.seconds)
            self.metrics.batch_size.observe(len(inference.frames))
        else:
            self.metrics.inference_errors.inc()
            log.warning(
                "inference failed on a batch of %d (%s); retried frame by frame",
                len(inference.frames),
                inference.batch_error,
            )
        scored = self.cameras.score(inference)
        for consumed, error in scored.rejected:
            self.publisher.dead_letter(consumed, error)
        self.publisher.scores(scored.scores, scored.captures)
        self.publisher.alerts(scored.alerts)
        self.publisher.thumbnails(scored.thumbnails)

    def _busy_models(self) -> int:
        return sum(not batch.scored for batch in self._inflight)

    def _poll_batch(self, oldest: InFlight | None, spare: bool) -> list[Any]:
        """Up to max_batch records across partitions; returns early once the oldest batch in flight
        is scored, so that it is published without delay, with what had arrived by then (those decode
        while it is published).

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
            scored = oldest is not None and oldest.scored
            if scored and got:
                break
            if scored:
                wait_ms = 0.0  # the oldest is published next: only what is here already, no waiting
            elif deadline is None:
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
            if scored:
                break
            if not spare:
                continue
            if got and deadline is None:
                deadline = time.monotonic() + batching.max_wait_ms / 1e3
            if deadline is not None and time.monotonic() >= deadline:
                break
            if deadline is None and oldest is None:
                break  # idle and nothing came
        return got

    def _update_lag(self) -> None:
        """The consumer lag gauges, every LAG_SECONDS (reading every partition's position each cycle
        cost 5-8% of a busy service's main thread)."""
        assert self._consumer is not None
        now = time.monotonic()
        if now - self._lag_updated < LAG_SECONDS:
            return
        self._lag_updated = now
        for tp in self.assigned:
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(
                    max(0, highwater - self._consumer.position(tp))
                )

    def _end_stalled(self) -> None:
        """End the open alerts of cameras that went silent (reason `stalled`), twice a second."""
        assert self.publisher is not None
        now = time.monotonic()
        if now - self._stall_checked < STALL_CHECK_SECONDS:
            return
        self._stall_checked = now
        ended = self.cameras.stalled(now)
        if ended:
            self.publisher.alerts(ended)
            self.publisher.flush()

    def _housekeep(self) -> None:
        if time.monotonic() - self._housekept > HOUSEKEEPING_SECONDS:
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self._housekept = time.monotonic()

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
        """Create the output topics, the producer and the group consumer (subscribed; partitions come later).

        Output topics get one partition each (records stay keyed by camera) and existing ones are left
        alone: the producer never waits on a broker's auto-creation (or on one that has it off).
        """
        topics = self.cfg.topics
        outputs = [topics.scores, topics.alerts, topics.dead_letters, topics.thumbnails]
        create_topics(self.cfg.kafka, dict.fromkeys(outputs, 1))
        producer = make_producer(self.cfg.kafka, self.cfg.producer)
        self.publisher = Publisher(
            producer,
            self.cfg.topics,
            self.metrics,
            self.stats,
            self.cfg.kafka.request_timeout_ms / 1e3,
            self.webhooks,
        )
        try:
            self.connect_consumer()
        except KafkaUnavailableError:
            self.publisher.close()  # a later connect() makes a new one
            self.publisher = None
            raise
        self.webhooks.start()  # idempotent: a reconnect starts nothing twice

    def connect_when_kafka_answers(self, say: Callable[[str], None]) -> bool:
        """`connect()` once Kafka answers, however long that takes (start order does not matter).

        Says once what it waits for; `/readyz` answers 503 meanwhile. Returns False when a stop was
        requested first.

        Raises:
            KafkaUnavailableError: Kafka did not answer within `kafka.startup_wait_seconds`.
        """
        failed: set[str] = set()
        limit, started = self.cfg.kafka.startup_wait_seconds, time.monotonic()
        while wait_for_kafka(self.cfg.kafka, self.stop_requested, say):
            try:
                with quiet_kafka_logs():
                    self.connect()
                return True
            except KafkaUnavailableError as err:  # e.g. a broker still starting refuses to create topics
                if limit is not None and time.monotonic() - started >= limit:
                    raise
                if str(err) not in failed:
                    say(f"{err}; trying again")
                    failed.add(str(err))
                self.stop_requested.wait(RETRY_BACKOFF[0])
        return False

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
        assert self._consumer is not None and self.publisher is not None
        self._discard_inflight()
        self.publisher.discard()
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
            for future in self._inflight.popleft().inferences:
                future.result()  # the model threads are idle again before anything else runs

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
        if self.publisher is not None:
            try:
                self._drain()
            except KafkaError as err:  # left uncommitted: redone by the next owner of its partitions
                log.error("could not publish the batches in flight on shutdown: %s", err)
            try:
                for camera_id in list(self.cameras.states):
                    self.publisher.alerts(self.cameras.close(camera_id))
                self.publisher.flush()
            except KafkaError as err:  # the scores are committed already; only the end events are lost
                log.error("could not publish the end events of open alerts on shutdown: %s", err)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        self.webhooks.close()  # after the last flush: the end events of open alerts go out too
        self.intake.shutdown()
        self.models.shutdown()
        self.router.close()

    def release(self, partitions: set[TopicPartition]) -> None:
        """Cameras on revoked partitions move to another instance: finish the batches in the models
        (their offsets committed while they are still ours), end their alerts, drop their state."""
        if self.publisher is not None:
            try:
                self._drain()
            except KafkaError as err:  # uncommitted: the partitions' next owner redoes these frames
                log.warning("could not finish the batch in flight before a rebalance: %s", err)
        moving = self.cameras.on(partitions)
        for camera_id in moving:
            # Close before dropping the state: the end event's snapshot reads it.
            if self.publisher is not None:
                self.publisher.alerts(self.cameras.close(camera_id, "moved"))
            self.cameras.drop(camera_id)
            self.intake.forget(camera_id)
        if moving and self.publisher is not None:
            self.publisher.flush()
        self.assigned -= partitions

    # --- brokers -----------------------------------------------------------------------------------

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


def open_models(cfg: ServiceConfig, metrics: ServiceMetrics) -> ModelRouter:
    """The models `cfg.model` names: a store (its models loaded now) and/or one artifact.

    Raises:
        ConfigError: neither is given. StoreError: the store folder is missing.
    """
    settings = cfg.model
    if settings.artifact is None and settings.store is None:
        raise ConfigError(
            "field 'model.artifact': no model given; pass --artifact DIR (one model for every camera) "
            "or --store DIR (a model per camera), or set one in --config"
        )
    plan = plan_model(settings)

    def open_model(path: Path) -> LoadedModel:
        runtime = open_runtime(
            path,
            settings.backend,
            device=settings.device,
            threads=plan.threads,
            engine_cache=settings.engine_cache,
        )
        return LoadedModel.from_runtime(runtime)

    fixed = open_model(settings.artifact) if settings.artifact is not None else None
    store = ModelStore(settings.store) if settings.store is not None else None
    router = ModelRouter(open_model, metrics, store, fixed, settings.store_poll_seconds)
    router.start()
    return router


def serve(
    cfg: ServiceConfig, max_idle_seconds: float | None = None, on_ready: Callable[[Any], None] | None = None
) -> ServiceStats:
    """Open the runtime, start the HTTP endpoint and run the service until SIGTERM/SIGINT (`anomon run`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter is not the operator's news
    # The model owns the cores: OpenCV's own thread pool on per-frame resizes only competes with it.
    cv2.setNumThreads(1)
    metrics = ServiceMetrics()
    router = open_models(cfg, metrics)
    service = MonitorService(cfg, router, metrics)
    plan = plan_model(cfg.model)
    fixed = router.fixed
    serving = f"the model store {cfg.model.store}" if fixed is None else fixed.runtime.describe()
    print(
        f"anomon run: serving {serving} with model.workers {service.workers}, "
        f"model.threads {plan.threads or 'the backend default'}",
        file=sys.stderr,
    )
    if cfg.webhooks.endpoints:
        print(f"anomon run: alert webhooks to {service.webhooks.describe()}", file=sys.stderr)
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
        if not service.connect_when_kafka_answers(
            lambda message: print(f"anomon run: {message}", file=sys.stderr)
        ):
            service.shutdown()  # stopped while waiting for Kafka
            return service.stats
        if on_ready is not None:
            on_ready(service)
        return service.run(max_idle_seconds=max_idle_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if http is not None:
            http.stop()
