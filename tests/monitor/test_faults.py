"""Faults while the service runs: the broker cut off mid-stream, a failing runtime, a rebalance under load.

Every test ends with the same account: each frame sent is scored or dead-lettered (or counted as
dropped), and duplicates stay within what was uncommitted when the fault hit.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from model.runtime import open_runtime
from model.runtime.base import Runtime
from monitor import service as service_module
from monitor.broker import EmbeddedBroker, free_port
from monitor.config import ServiceConfig, load_service_config
from monitor.ingest import FramePublisher, encode_jpeg
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.service import MonitorService
from tests.monitor.conftest import RecordReader, TopicFactory, send_records


class TcpProxy:
    """A TCP forwarder the test controls: `cut()` drops every connection and refuses new ones.

    The broker advertises the proxy's port, so every client connection (bootstrap, fetch, produce,
    group coordinator) runs through it, as through a network link that can fail.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        """Close every open connection and refuse new ones until `restore()`."""
        self._open.clear()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            if not self._open.is_set():
                client.close()  # a refused connection, as from a host that is down
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _service_config(bootstrap: str, frames: str, **overrides: Any) -> ServiceConfig:
    return load_service_config(
        overrides={
            "kafka.bootstrap_servers": bootstrap,
            "intake.mode": "replay",
            "consumer.group_id": f"{frames}.group",
            "topics.frames": frames,
            "topics.scores": f"{frames}.scores",
            "topics.alerts": f"{frames}.alerts",
            "topics.dead_letters": f"{frames}.dlq",
            "batching.max_batch": 4,
            "batching.max_wait_ms": 5,
            **overrides,
        },
        environ={},
    )


def _output_topics(settings: KafkaSettings, cfg: ServiceConfig) -> None:
    create_topics(settings, {cfg.topics.scores: 1, cfg.topics.alerts: 1, cfg.topics.dead_letters: 1})


def _produce(settings: KafkaSettings, topic: str, cameras: list[str], count: int, start: int = 0) -> int:
    """`count` frames per camera, indexes start..start+count-1; returns frames sent."""
    rng = np.random.default_rng(start)
    publisher = FramePublisher(make_producer(settings), topic)
    try:
        for index in range(start, start + count):
            for camera in cameras:
                image = rng.integers(0, 255, (48, 64), dtype=np.uint8)
                publisher.send(camera, encode_jpeg(image), "image/jpeg", index, time.time_ns())
        return publisher.flush()
    finally:
        publisher.producer.close()


def _scored(read_records: RecordReader, topic: str, at_least: int) -> Counter[tuple[str, int]]:
    return Counter(
        (doc["camera_id"], doc["frame_index"])
        for doc in (json.loads(r.value) for r in read_records(topic, at_least, timeout_s=20))
    )


@pytest.fixture(scope="module")
def tiny_runtime(tiny_checkpoint: Path) -> Iterator[Runtime]:
    runtime = open_runtime(tiny_checkpoint, "torch", device="cpu", threads=1)
    yield runtime


class _Running:
    """A MonitorService running in a thread until `stop()`."""

    def __init__(self, service: MonitorService) -> None:
        self.service = service
        self.stats: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        service.connect()
        self.thread.start()

    def _run(self) -> None:
        self.stats = self.service.run()

    def stop(self) -> Any:
        self.service.stop_requested.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop"
        return self.stats


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic from the start, until its end offsets are reached."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _scores(bootstrap: str, cfg: ServiceConfig) -> Counter[tuple[str, int]]:
    docs = [json.loads(r.value) for r in _read_all(bootstrap, cfg.topics.scores)]
    assert all(math.isfinite(d["score"]) and math.isfinite(d["raw_score"]) for d in docs)
    return Counter((d["camera_id"], d["frame_index"]) for d in docs)


def _dead_letters(bootstrap: str, cfg: ServiceConfig) -> dict[tuple[str, int], str]:
    out = {}
    for r in _read_all(bootstrap, cfg.topics.dead_letters):
        headers = {k: v.decode() for k, v in r.headers}
        out[(r.key.decode(), int(headers["frame-index"]))] = headers["anomon-error"]
    return out


def test_broker_cut_mid_stream_service_goes_unready_resumes_and_loses_nothing(
    tiny_runtime: Runtime, tmp_path: Path
) -> None:
    broker_port = free_port()
    proxy = TcpProxy(broker_port).start()
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{proxy.port}")
        frames = "faults.cut"
        cfg = _service_config(settings.bootstrap_servers, frames, **{"kafka.request_timeout_ms": 5000})
        create_topics(settings, {frames: 2})
        _output_topics(settings, cfg)
        cameras = ["cut-1", "cut-2"]
        sent = _produce(settings, frames, cameras, 150)
        running = _Running(MonitorService(cfg, tiny_runtime))
        service = running.service
        _wait(lambda: service.stats.processed >= 40, 60, "the first scores")
        assert service.ready()
        proxy.cut()
        _wait(lambda: not service.ready(), 30, "not ready while the broker is cut off")
        time.sleep(3)
        assert not service.ready() and service.metrics.ready._value.get() == 0
        proxy.restore()
        _wait(service.ready, 60, "ready again once the broker is back")
        # Frames produced after the outage are taken up too.
        sent += _produce(settings, frames, cameras, 50, start=150)
        _wait(lambda: len(_scores(settings.bootstrap_servers, cfg)) >= sent, 60, "every frame scored")
        running.stop()
        scores = _scores(settings.bootstrap_servers, cfg)
        expected = {(c, i) for c in cameras for i in range(200)}
        assert set(scores) == expected, "every frame is scored once the broker is back"
        assert _dead_letters(settings.bootstrap_servers, cfg) == {}
        duplicates = sum(scores.values()) - len(scores)
        # Redone after the rewind: at most what was polled but not committed when the link went down
        # (the batches in the models and the one being published).
        assert duplicates <= cfg.batching.max_batch * (service.workers + 1)
    finally:
        proxy.close()
        broker.stop()


class FaultyRuntime(Runtime):
    """The real runtime with scripted failures (a fault a real model cannot be made to show on cue).

    Call 2 (a batch) raises; of its frame-by-frame retries (calls 3 to 6), the first raises again and
    the second returns NaN; call 10 (a later batch) returns NaN for its first frame. Everything else
    is the model's.
    """

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.device = inner.device
        self.model = inner.model
        self.calls = 0

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls in (2, 3):
            raise RuntimeError(f"scripted failure on call {self.calls}")
        scores, maps = self.inner.infer(frames)
        if self.calls in (4, 10):
            scores = scores.copy()
            scores[0] = np.nan
        return scores, maps


BATCH = 4


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "serial"])
def test_runtime_failures_are_dead_lettered_by_policy_and_nan_never_alerts(
    tiny_runtime: Runtime, kafka_settings: KafkaSettings, new_topic: TopicFactory, overlap: bool
) -> None:
    frames = new_topic(partitions=1)
    cfg = _service_config(
        kafka_settings.bootstrap_servers,
        frames,
        **{
            "batching.max_batch": BATCH,
            "batching.max_wait_ms": 200,
            "batching.overlap": overlap,
            "model.workers": 1,  # FaultyRuntime's script counts calls: one model thread keeps their order
            # Every finite score would open an alert: one from NaN would show.
            "cameras.defaults": {
                "on_threshold": 0.001,
                "off_threshold": 0.0,
                "min_frames": 1,
                "smoothing_frames": 1,
            },
        },
    )
    _output_topics(kafka_settings, cfg)
    sent = _produce(kafka_settings, frames, ["nan-1"], 40)
    running = _Running(MonitorService(cfg, FaultyRuntime(tiny_runtime)))
    service = running.service
    _wait(lambda: service.stats.processed + service.stats.dead_letters >= sent, 60, "every frame handled")
    stats = running.stop()
    bootstrap = kafka_settings.bootstrap_servers
    scores, letters = _scores(bootstrap, cfg), _dead_letters(bootstrap, cfg)
    # Policy: a failing batch is retried frame by frame; a frame that fails alone, or scores NaN, is
    # dead-lettered with its reason; the service goes on with the next frames.
    assert sorted(Counter(letters.values()).items()) == [("inference-failed", 1), ("invalid-score", 2)]
    assert set(scores).isdisjoint(letters) and len(scores) + len(letters) == sent
    assert stats.processed == sent - 3 and stats.dead_letters == 3
    assert service.metrics.inference_errors._value.get() >= 3
    alerts = [json.loads(r.value) for r in _read_all(bootstrap, cfg.topics.alerts)]
    assert alerts, "finite scores over a zero threshold do open alerts"
    nan_frames = {i for (_, i), reason in letters.items() if reason == "invalid-score"}
    for alert in alerts:
        assert math.isfinite(alert["peak"]["score"]) and alert["peak"]["frame_index"] not in nan_frames


def test_rebalance_under_load_loses_nothing_and_bounds_duplicates(
    tiny_runtime: Runtime, tiny_checkpoint: Path, kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    frames = new_topic(partitions=4)
    cfg = _service_config(kafka_settings.bootstrap_servers, frames)
    _output_topics(kafka_settings, cfg)
    cameras = [f"reb-{i}" for i in range(8)]  # their keys cover all 4 partitions
    sent = _produce(kafka_settings, frames, cameras, 20)
    first = _Running(MonitorService(cfg, tiny_runtime))
    _wait(lambda: first.service.stats.processed >= 40, 60, "the first instance scoring")
    # A second instance joins the group mid-stream and takes over some partitions. The rest of the
    # stream is sent once it holds them: a fast first instance may have drained the backlog by then.
    second = _Running(MonitorService(cfg, open_runtime(tiny_checkpoint, "torch", device="cpu", threads=1)))
    _wait(lambda: bool(second.service.assigned), 60, "the second instance's partitions")
    sent += _produce(kafka_settings, frames, cameras, 20, start=20)
    _wait(lambda: second.service.stats.processed > 0, 60, "the second instance scoring")
    bootstrap = kafka_settings.bootstrap_servers
    _wait(lambda: len(_scores(bootstrap, cfg)) >= sent, 90, "every frame scored")
    a, b = first.stop(), second.stop()
    scores = _scores(bootstrap, cfg)
    assert set(scores) == {(c, i) for c in cameras for i in range(40)}
    assert a.processed + b.processed == sum(scores.values())
    assert first.service.stats.processed < sent and b.processed > 0, "both instances scored frames"
    # Redone after the move: at most the batches each instance had in its models.
    in_models = first.service.workers + second.service.workers
    assert sum(scores.values()) - len(scores) <= in_models * cfg.batching.max_batch


def test_a_consumer_whose_polls_stall_is_replaced_and_loses_nothing(
    tiny_runtime: Runtime,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "STALL_SECONDS", 1.0)
    frames = new_topic(partitions=2)
    cfg = _service_config(kafka_settings.bootstrap_servers, frames)
    _output_topics(kafka_settings, cfg)
    cameras = ["stall-1", "stall-2"]
    sent = _produce(kafka_settings, frames, cameras, 10)
    running = _Running(MonitorService(cfg, tiny_runtime))
    service = running.service
    _wait(lambda: service.stats.processed >= sent, 60, "the first frames scored")
    # The stall seen in soaks (polls return nothing, positions stop, no error): a
    # consumer whose partitions are paused behaves the same from the outside.
    stalled = service._consumer
    assert stalled is not None
    stalled.pause(*service.assigned)
    sent += _produce(kafka_settings, frames, cameras, 10, start=10)
    _wait(lambda: service.stats.processed >= sent, 60, "the frames after the stall scored")
    running.stop()
    assert service._consumer is not stalled
    assert service.metrics.consumer_reconnects._value.get() >= 1
    scores = _scores(kafka_settings.bootstrap_servers, cfg)
    assert set(scores) == {(c, i) for c in cameras for i in range(20)}
    assert _dead_letters(kafka_settings.bootstrap_servers, cfg) == {}


def test_reconnects_back_off_while_stuck_and_reset_when_records_flow(
    tiny_runtime: Runtime,
    kafka_settings: KafkaSettings,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "STALL_SECONDS", 1.0)
    stuck = threading.Event()
    stuck.set()
    assigned = service_module._Rebalance.on_partitions_assigned

    def assign_stuck(listener: Any, partitions: set[TopicPartition]) -> None:
        assigned(listener, partitions)
        if stuck.is_set():  # as a broker that answers but serves no records: every consumer is stuck
            listener.service._consumer.pause(*partitions)

    monkeypatch.setattr(service_module._Rebalance, "on_partitions_assigned", assign_stuck)
    frames = new_topic(partitions=1)
    cfg = _service_config(kafka_settings.bootstrap_servers, frames)
    _output_topics(kafka_settings, cfg)
    sent = _produce(kafka_settings, frames, ["stuck-1"], 5)
    running = _Running(MonitorService(cfg, tiny_runtime))
    service = running.service
    reconnects: list[float] = []
    reconnect = service._reconnect_consumer

    def timed(waiting: int, quiet_s: float) -> None:
        reconnects.append(time.monotonic())
        reconnect(waiting, quiet_s)

    monkeypatch.setattr(service, "_reconnect_consumer", timed)
    _wait(lambda: len(reconnects) >= 3, 60, "three reconnects of a stuck consumer")
    stuck.clear()  # the consumer made by the third reconnect is not stuck
    _wait(lambda: service.stats.processed >= sent, 60, "the frames scored once records flow")
    running.stop()
    first, second = reconnects[1] - reconnects[0], reconnects[2] - reconnects[1]
    # Each reconnect waits twice the silence that led to the one before (about 1 s, then 2, 4...).
    assert second > 2 * first * 0.95, (first, second)
    assert service._stall_after == service_module.STALL_SECONDS, "reset once records came"
    assert set(_scores(kafka_settings.bootstrap_servers, cfg)) == {("stuck-1", i) for i in range(5)}


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that claims width x height (an 8-bit grey image): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_bad_records_through_the_service_are_dead_lettered_with_their_reason(
    tiny_runtime: Runtime, kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    frames = new_topic(partitions=1)
    cfg = _service_config(kafka_settings.bootstrap_servers, frames)
    _output_topics(kafka_settings, cfg)
    good = encode_jpeg(np.full((48, 64), 100, np.uint8))
    jpeg = [("content-type", b"image/jpeg"), ("anomon-schema", b"1")]
    bad = {
        "bad-key": (b"\xff\xfecam", good, [*jpeg, ("frame-index", b"1")]),
        "unknown-schema": (b"cam-1", good, [("content-type", b"image/jpeg"), ("anomon-schema", b"2")]),
        "bad-header": (b"cam-1", good, [*jpeg, ("frame-index", b"one")]),
        "bad-content-type": (b"cam-1", b"GIF89a not ours", []),
        "too-many-pixels": (
            b"cam-1",
            _png_header(100_000, 100_000) + bytes(64),
            [("content-type", b"image/png")],
        ),
        "undecodable": (b"cam-1", good[:40], jpeg),
        "empty": (b"cam-1", b"", jpeg),
    }
    send_records(kafka_settings, frames, bad.values())
    _produce(kafka_settings, frames, ["cam-2"], 3)  # good frames after the bad ones still get scored
    running = _Running(MonitorService(cfg, tiny_runtime))
    _wait(
        lambda: running.service.stats.dead_letters >= len(bad) and running.service.stats.processed >= 3,
        60,
        "all",
    )
    running.stop()
    letters = _read_all(kafka_settings.bootstrap_servers, cfg.topics.dead_letters)
    reasons = sorted(dict(r.headers)["anomon-error"].decode() for r in letters)
    assert reasons == sorted(bad)
    for letter in letters:  # the record as it came, plus where it came from
        reason = dict(letter.headers)["anomon-error"].decode()
        assert (letter.key, letter.value) == bad[reason][:2]
        assert dict(letter.headers)["anomon-source"].decode().startswith(f"{frames}/0/")
    assert len(_scores(kafka_settings.bootstrap_servers, cfg)) == 3


class _RawName(str):
    """A header name the producer writes as bytes that are not UTF-8 (as a foreign client could)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"camera-\xff\xfe"


def test_a_header_name_that_is_not_utf8_is_dead_lettered_not_a_poison_pill(
    tiny_runtime: Runtime, kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    # kafka-python decodes header names inside poll(): unguarded, this record failed every poll.
    frames = new_topic(partitions=1)
    cfg = _service_config(kafka_settings.bootstrap_servers, frames)
    _output_topics(kafka_settings, cfg)
    good = encode_jpeg(np.full((48, 64), 100, np.uint8))
    headers = [("content-type", b"image/jpeg"), ("anomon-schema", b"1"), ("frame-index", b"0")]
    _produce(kafka_settings, frames, ["cam-1"], 2)
    send_records(kafka_settings, frames, [(b"cam-9", good, [*headers, (_RawName("x"), b"v")])])
    _produce(kafka_settings, frames, ["cam-1"], 2, start=2)
    running = _Running(MonitorService(cfg, tiny_runtime))
    _wait(lambda: running.service.stats.processed + running.service.stats.dead_letters >= 5, 60, "all")
    stats = running.stop()
    assert (stats.processed, stats.dead_letters) == (4, 1)
    (letter,) = _read_all(kafka_settings.bootstrap_servers, cfg.topics.dead_letters)
    found = dict(letter.headers)
    assert found["anomon-error"] == b"bad-header"
    assert found["anomon-error-detail"] == b"a header name is not valid UTF-8"
    assert (letter.key, letter.value) == (b"cam-9", good)  # the record itself is kept
    assert sorted(_scores(kafka_settings.bootstrap_servers, cfg)) == [("cam-1", i) for i in range(4)]
