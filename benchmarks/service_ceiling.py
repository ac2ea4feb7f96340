"""The service's own ceiling: `anomon run` with an instant model, fed by N cameras.

The model is replaced by an instant runtime (this benchmark only: it returns zeros of the artifact's
score and map shapes), so what is measured is everything else the service does per frame: poll
(kafka-python's fetch and record parsing), decode, pair (resize, pairing with the previous frame),
state (camera state, localization, score messages), publish (encode, send, flush) and commit.

Saturated runs: Ped2 test JPEGs (about 24 KB, 360x240) are pre-loaded into a fresh embedded broker
as N cameras (one record per camera tick, keyed by camera, 10 frames/s of capture time each), then
the service (replay mode, default settings otherwise) scores them flat out; sustained frames/s =
scores / (first to last publish). CPU per frame: the service's and the broker's CPU time (/proc)
over the frames scored meanwhile. Live runs: the N cameras send --live-fps frames/s in all
(capture time = send time) and the capture-to-publish latency of each score gives p50 and p99.

Profile: one more saturated run per variant at --profile-cameras with py-spy sampling every thread
of the service; each sample is put in the stage of its innermost frame that names one (STAGES).
The service's CPU time over the profile is split by the shares of the samples not waiting (WAITS),
the main thread's wall time by the shares of all its samples.

Clients: kafka-python (as the service configures it) and confluent-kafka alone in this process,
consuming the pre-loaded frames and producing score-sized records: CPU per record of each.

Variants: the tree benchmarked (this repository) and, with --baseline DIR (a checkout of an earlier
commit: `git clone . /tmp/anomon-before && git -C /tmp/anomon-before checkout COMMIT`), that tree
too, alternated run by run in every round; each row records the commit it measured. This machine is
shared and noisy: the headline numbers are medians over rounds, and the load average is recorded.

    python benchmarks/service_ceiling.py --data ../shared/data/ucsd_ped2 --rounds 3

With a real model (`--backend torch|onnxruntime|tensorrt --artifact DIR`), the same runs measure the
service end to end: `anomon run` as an operator starts it, serving that export (what
benchmarks/gpu_check.sh runs on a GPU, without the profile and the client comparison):

    python benchmarks/service_ceiling.py --backend tensorrt --artifact /tmp/exports/fp16 \
        --device cuda --max-batch 32 --rounds 1 --profile-cameras 0 --clients 0 --out /tmp/e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CAMERA_INTERVAL_NS = 100_000_000  # capture times 0.1 s apart per camera, as 10 frames/s cameras
PROFILE_RATE = 200  # py-spy samples per second

# (file suffix, function as py-spy names it) -> stage; a sample is in the stage of its innermost frame
# found here (else `other`).
STAGES: dict[tuple[str, str], str] = {
    ("monitor/service.py", "MonitorService._poll_batch"): "poll",
    ("kafka/net/selector.py", "NetworkSelector.run_forever"): "poll",  # the consumer's network thread
    ("kafka/consumer/fetcher.py", "Fetcher.fetch_records"): "poll",
    ("monitor/intake.py", "Intake.take"): "decode",  # parsing records, handing them to the decode pool
    ("monitor/intake.py", "Intake.start"): "decode",
    ("monitor/intake.py", "Intake.finish"): "decode",  # waiting for the decode pool (pairing: below)
    ("monitor/frames.py", "parse_record"): "decode",
    ("monitor/intake.py", "Intake.take.<locals>.decode"): "decode",
    ("monitor/intake.py", "Intake._decode"): "decode",
    ("monitor/frames.py", "decode_frame"): "decode",
    ("monitor/intake.py", "Intake._model_input"): "pair",
    ("model/data.py", "resize_frame"): "pair",
    ("monitor/pairing.py", "MotionPairs.pair"): "pair",
    ("monitor/scoring.py", "infer_batch"): "model",
    ("monitor/scoring.py", "ModelWorkers.submit"): "model",
    ("monitor/service.py", "MonitorService._publish"): "state",
    ("monitor/cameras.py", "Cameras.score"): "state",
    ("monitor/publishing.py", "Publisher.scores"): "publish",
    ("monitor/publishing.py", "Publisher.alerts"): "publish",
    ("monitor/publishing.py", "Publisher.thumbnails"): "publish",
    ("monitor/publishing.py", "Publisher.dead_letter"): "publish",
    ("monitor/publishing.py", "Publisher.flush"): "publish",
    ("kafka/producer/sender.py", "Sender.run"): "publish",  # the producer's network thread
    ("monitor/service.py", "MonitorService._finish"): "commit",  # what it does beside publishing
    ("kafka/coordinator/consumer.py", "ConsumerCoordinator._send_offset_commit_request"): "commit",
    ("kafka/coordinator/consumer.py", "ConsumerCoordinator._handle_offset_commit_response"): "commit",
    ("monitor/service.py", "MonitorService._update_lag"): "other",
    ("monitor/service.py", "MonitorService._housekeep"): "other",
    ("monitor/service.py", "MonitorService._end_stalled"): "other",
}
# A sample whose innermost frame is one of these waits (py-spy --idle keeps them): wall time, not CPU.
WAITS = frozenset(
    {
        "Event.wait",
        "Condition.wait",
        "EpollSelector.select",
        "_PollLikeSelector.select",
        "FutureProduceResult.wait",
        "_result_or_cancel",
        "Executor.map.<locals>.result_iterator",
        "_worker",
        "Thread.join",
        "BaseServer.serve_forever",
        "NetworkSelector._wait_io",
    }
)
MAIN_THREAD = "serve_instant"  # a frame every sample of the service's main thread holds
STAGE_ORDER = ("poll", "decode", "pair", "model", "state", "publish", "commit", "other")


# --- the service's side (a subprocess): `anomon run` with the instant runtime ---------------------


def serve_instant(config_path: str) -> None:
    """`anomon run --config FILE` as the CLI runs it, with every model an instant runtime."""
    from model.runtime.base import Runtime
    from model.runtime.torch_backend import TorchRuntime
    from monitor import service
    from monitor.config import load_service_config
    from monitor.routing import ModelRouter
    from monitor.scoring import LoadedModel

    class InstantRuntime(Runtime):
        """Correctly shaped zeros at once: the service's work without the model's."""

        backend = "instant"
        device = "cpu"

        def __init__(self, checkpoint: Path) -> None:
            opened = TorchRuntime(checkpoint, threads=1)  # the artifact's identity and shapes
            self.model = opened.model

        def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            frames = self.check_input(frames)
            batch = len(frames)
            return np.zeros(batch, np.float32), np.zeros((batch, *self.model.map_shape), np.float32)

    def instant_models(cfg: Any, metrics: Any) -> ModelRouter:
        runtime = InstantRuntime(cfg.model.artifact)
        return ModelRouter.single(LoadedModel.from_runtime(runtime), metrics)

    service.open_models = instant_models  # type: ignore[assignment]
    service.serve(load_service_config(config_path))


# --- the benchmark's side ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def git_commit(tree: Path) -> str:
    """The tree's commit, with `+dirty` when it has uncommitted changes to tracked files."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(tree), "diff", "--quiet", "HEAD", "--", "monitor", "model"],
            capture_output=True,
        )
    except FileNotFoundError:  # no git on this machine (a copy of the tree on a GPU machine)
        return "unknown"
    if head.returncode != 0:  # a copy of the tree without its .git
        return "unknown"
    return head.stdout.strip()[:12] + ("+dirty" if dirty.returncode else "")


def load_frames(data: Path) -> list[bytes]:
    """Every Ped2 test frame's JPEG bytes, clip after clip."""
    from monitor.replay import find_clips

    return [payload for clip in find_clips(data) for payload, _ in clip.encoded_frames()]


def preload(settings: Any, topic: str, frames: list[bytes], cameras: int, total: int) -> int:
    """`total` frames as `cameras` cameras ticking together, each camera from its own frame on."""
    from monitor.ingest import FramePublisher
    from monitor.kafka_client import make_producer
    from monitor.replay import camera_ids
    from monitor.wire import JPEG

    ids = camera_ids(cameras, "cam")
    producer = make_producer(settings)
    publisher = FramePublisher(producer, topic)
    start_ns = time.time_ns() - (total // cameras + 1) * CAMERA_INTERVAL_NS
    for tick in range(total // cameras):
        for number, camera in enumerate(ids):
            payload = frames[(number * 97 + tick) % len(frames)]
            publisher.send(camera, payload, JPEG, tick, start_ns + tick * CAMERA_INTERVAL_NS)
    publisher.flush()
    producer.close()
    return total // cameras * cameras


def stage_shares(raw: str) -> tuple[dict[str, float], dict[str, float], int]:
    """py-spy's raw output (`frame;frame;... count`, outermost first, idle samples included) -> the
    share of each stage in the samples that were not waiting (CPU), its share of the main thread's
    samples (wall time, waits included), and the number of samples."""
    cpu: Counter[str] = Counter()
    main: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame.partition(" (") for frame in stack.split(";")]
        stage = "other"
        for function, _, where in frames:
            path = where.split(":", 1)[0]
            stage = next(
                (
                    named
                    for (suffix, name), named in STAGES.items()
                    if function == name and path.endswith(suffix)
                ),
                stage,
            )
        if any(function == MAIN_THREAD for function, _, _ in frames):
            main[stage] += int(count)
        if frames[-1][0] not in WAITS:
            cpu[stage] += int(count)
    samples = sum(main.values())
    cpu_total, main_total = sum(cpu.values()) or 1, sum(main.values()) or 1
    return (
        {stage: cpu[stage] / cpu_total for stage in STAGE_ORDER},
        {stage: main[stage] / main_total for stage in STAGE_ORDER},
        samples,
    )


@dataclass(frozen=True)
class Variant:
    """A service to measure: a source tree, and the producer client it runs with (None: its default)."""

    name: str
    tree: Path
    client: str | None = None


@dataclass
class Run:
    """One service run's numbers."""

    variant: str
    commit: str
    kind: str  # saturated, live or profile
    round: int
    cameras: int
    frames_sent: int
    frames_scored: int
    fps: float  # scores / first to last publish
    service_cpu_us_per_frame: float
    broker_cpu_us_per_frame: float
    mean_batch: float
    input_fps: float = float("nan")  # live: what the cameras sent
    e2e_p50_ms: float = float("nan")
    e2e_p99_ms: float = float("nan")
    stages_us_per_frame: dict[str, float] | None = None  # profile: the service's CPU split by stage
    main_thread_us_per_frame: dict[str, float] | None = None  # profile: the main thread's wall time
    profile_samples: int = 0  # of the main thread


class Bench:
    """Runs one variant of the service at a time behind a broker started per round."""

    def __init__(self, args: argparse.Namespace, frames: list[bytes], work: Path) -> None:
        self.args = args
        self.frames = frames
        self.work = work
        self.runs = 0

    def _config(self, bootstrap: str, name: str, mode: str, client: str | None) -> dict[str, Any]:
        topics = {k: f"ceiling.{name}.{k}" for k in ("frames", "scores", "alerts", "dead_letters")}
        return {
            "kafka": {"bootstrap_servers": bootstrap},
            "consumer": {"group_id": f"ceiling-{name}"},
            "topics": topics | {"thumbnails": f"ceiling.{name}.thumbnails"},
            "model": self._model(),
            "intake": {"mode": mode},
            "batching": {"max_batch": self.args.max_batch},
        } | ({"producer": {"client": client}} if client else {})

    def _model(self) -> dict[str, Any]:
        """The config's model section: the checkpoint (the instant model reads its shapes), or the
        export the real model is served from."""
        if self.args.backend == "instant":
            return {"artifact": str(self.args.checkpoint)}
        model = {"artifact": str(self.args.artifact or self.args.checkpoint), "backend": self.args.backend}
        if self.args.device:
            model["device"] = self.args.device
        if self.args.engine_cache:
            model["engine_cache"] = str(self.args.engine_cache)
        return model

    def _topic(self, settings: Any, topic: str, cameras: int) -> None:
        from monitor.kafka_client import create_topics

        create_topics(settings, {topic: min(cameras, self.args.max_partitions)})

    def _live_send(self, settings: Any, topic: str, cameras: int, seconds: float, fps: float) -> int:
        """The cameras send `fps` frames/s in all for `seconds`, capture time = send time."""
        from monitor.ingest import FramePublisher
        from monitor.kafka_client import make_producer
        from monitor.replay import camera_ids
        from monitor.wire import JPEG

        ids = camera_ids(cameras, "cam")
        producer = make_producer(settings)
        publisher = FramePublisher(producer, topic)
        ticks = int(seconds * fps / cameras)
        interval = cameras / fps
        started = time.monotonic()
        for tick in range(ticks):
            time.sleep(max(0.0, started + tick * interval - time.monotonic()))
            now = time.time_ns()
            for number, camera in enumerate(ids):
                publisher.send(camera, self.frames[(number * 97 + tick) % len(self.frames)], JPEG, tick, now)
        publisher.flush()
        producer.close()
        return ticks * cameras

    def run(self, broker: Any, variant: Variant, kind: str, round_no: int, cameras: int) -> Run:
        from stream import ScoreReader, Service, _total

        from monitor.kafka_client import KafkaSettings

        self.runs += 1
        name = f"{variant.name}-{kind}-{cameras}-{round_no}-{self.runs}".replace("+", "-")
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, client_id="anomon-ceiling")
        cfg = self._config(broker.bootstrap, name, "live" if kind == "live" else "replay", variant.client)
        self._topic(settings, cfg["topics"]["frames"], cameras)
        total = self.args.frames
        sent = (
            0 if kind == "live" else preload(settings, cfg["topics"]["frames"], self.frames, cameras, total)
        )
        # The instant model: this script serves it; a real model: `anomon run` itself.
        command = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        service = Service(
            cfg, self.work, command=command if self.args.backend == "instant" else None, tree=variant.tree
        )
        broker_pid = broker._process.pid
        profiler = None
        try:
            service.wait_ready(120 if self.args.backend == "instant" else 600)  # TensorRT may build
            cpu0, broker0 = cpu_seconds(service.process.pid), cpu_seconds(broker_pid)
            started = time.monotonic()
            if kind == "profile":
                raw = self.work / f"{name}.txt"
                profiler = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(service.process.pid),
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--rate",
                        str(PROFILE_RATE),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            if kind == "live":
                reader = ScoreReader(broker.bootstrap, cfg["topics"]["scores"])
                reader.start()
                sent = self._live_send(
                    settings, cfg["topics"]["frames"], cameras, self.args.live_seconds, self.args.live_fps
                )
            metrics = self._wait(service, sent, f"{name}")
            cpu1, broker1 = cpu_seconds(service.process.pid), cpu_seconds(broker_pid)
            wall = time.monotonic() - started
            shares: tuple[dict[str, float], dict[str, float], int] | None = None
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
                shares = stage_shares(raw.read_text())
        finally:
            service.stop()
        if kind == "live":
            time.sleep(0.5)
            reader.stop.set()
            reader.join(5)
        else:
            reader = ScoreReader(broker.bootstrap, cfg["topics"]["scores"])
            reader.collect(sent, timeout_s=120)
        scores = [m for m, _ in reader.received]
        published = sorted(m.processed_ts.timestamp() for m in scores)
        span = published[-1] - published[0] if len(published) > 1 else float("nan")
        e2e = np.array([m.latency_ms.end_to_end for m in scores] or [float("nan")])
        service_us = (cpu1 - cpu0) / max(1, len(scores)) * 1e6
        return Run(
            variant=variant.name,
            commit=git_commit(variant.tree),
            kind=kind,
            round=round_no,
            cameras=cameras,
            frames_sent=sent,
            frames_scored=len(scores),
            fps=(len(scores) - 1) / span,
            service_cpu_us_per_frame=service_us,
            broker_cpu_us_per_frame=(broker1 - broker0) / max(1, len(scores)) * 1e6,
            mean_batch=_total(metrics, "anomon_batch_size_sum")
            / max(1.0, _total(metrics, "anomon_batch_size_count")),
            input_fps=self.args.live_fps if kind == "live" else float("nan"),
            e2e_p50_ms=float(np.percentile(e2e, 50)) if kind == "live" else float("nan"),
            e2e_p99_ms=float(np.percentile(e2e, 99)) if kind == "live" else float("nan"),
            stages_us_per_frame=None if shares is None else {k: v * service_us for k, v in shares[0].items()},
            main_thread_us_per_frame=None
            if shares is None
            else {k: v * wall / max(1, len(scores)) * 1e6 for k, v in shares[1].items()},
            profile_samples=0 if shares is None else shares[2],
        )

    @staticmethod
    def _wait(service: Any, expected: int, desc: str, timeout_s: float = 300) -> dict[str, float]:
        """Until the service has scored `expected` frames (or timeout); its metrics then."""
        from stream import _total
        from tqdm import tqdm

        deadline = time.monotonic() + timeout_s
        metrics: dict[str, float] = {}
        with tqdm(total=expected, desc=desc, unit="frame", leave=False) as bar:
            while time.monotonic() < deadline:
                metrics = service.metrics()
                done = int(_total(metrics, "anomon_frames_processed_total")) + int(
                    _total(metrics, "anomon_frames_dropped_total")
                )
                bar.update(done - bar.n)
                if done >= expected:
                    break
                time.sleep(0.5)  # scraping costs the cores the service runs on
        return metrics


def client_costs(bootstrap: str, frames: list[bytes], records: int, partitions: int) -> list[dict[str, Any]]:
    """What each Kafka client costs this process per record, on one broker: consuming `records`
    pre-loaded frames from `partitions` partitions, and producing as many score-sized JSON records
    keyed by camera, flushed every 8 as the service flushes each batch. kafka-python as the service
    configures it, and confluent-kafka (librdkafka) with the same fetch wait and acks."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
    from confluent_kafka import TopicPartition as ConfluentPartition
    from kafka import KafkaConsumer, TopicPartition

    from monitor.kafka_client import ConsumerSettings, KafkaSettings, create_topics, make_producer

    settings = KafkaSettings(bootstrap_servers=bootstrap, client_id="anomon-ceiling")
    tuning = ConsumerSettings()
    topic = "ceiling.clients.frames"
    create_topics(settings, {topic: partitions})
    sent = preload(settings, topic, frames, 16, records)
    score = json.dumps({"schema": "anomon.score/1", "pad": "x" * 600}).encode()
    rows = []

    def timed(client: str, what: str, work: Any) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        count = work()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append(
            {
                "client": client,
                "what": what,
                "records": count,
                "records_per_s": count / wall,
                "cpu_us_per_record": cpu / count * 1e6,
            }
        )

    def kafka_python_consume() -> int:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=tuning.fetch_max_wait_ms,
            max_poll_records=tuning.max_poll_records,
            max_partition_fetch_bytes=tuning.max_partition_fetch_bytes,
        )
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        count = 0
        while count < sent:
            for batch in consumer.poll(timeout_ms=1000).values():
                count += sum(len(r.value) > 0 for r in batch)
        consumer.close()
        return count

    def confluent_consume() -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "ceiling-clients",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": tuning.fetch_max_wait_ms,
            }
        )
        consumer.assign([ConfluentPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        count = 0
        while count < sent:
            for message in consumer.consume(num_messages=tuning.max_poll_records, timeout=1.0):
                if message.error() is None:
                    count += len(message.value() or b"") > 0 and message.headers() is not None
        consumer.close()
        return count

    def kafka_python_produce() -> int:
        producer = make_producer(settings)
        for i in range(sent):
            producer.send("ceiling.clients.scores", key=f"cam-{i % 16}".encode(), value=score)
            if i % 8 == 7:
                producer.flush()
        producer.flush()
        producer.close()
        return sent

    def confluent_produce() -> int:
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        for i in range(sent):
            producer.produce("ceiling.clients.scores", key=f"cam-{i % 16}".encode(), value=score)
            if i % 8 == 7:
                producer.flush()
        producer.flush()
        return sent

    create_topics(settings, {"ceiling.clients.scores": 1})
    for client, consume, produce in (
        ("kafka-python", kafka_python_consume, kafka_python_produce),
        ("confluent-kafka", confluent_consume, confluent_produce),
    ):
        timed(client, f"consume {np.mean([len(f) for f in frames]) / 1024:.0f} KB frames", consume)
        timed(client, f"produce {len(score)} B records, flush every 8", produce)
    return rows


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def summarize(runs: list[Run], variants: list[str]) -> dict[str, Any]:
    """Per variant and camera count: median saturated frames/s and CPU per frame, live p99; profiles."""
    out: dict[str, Any] = {}
    for variant in variants:
        mine = [r for r in runs if r.variant == variant]
        by_cameras: dict[str, Any] = {}
        for cameras in sorted({r.cameras for r in mine}):
            sat = [r for r in mine if r.cameras == cameras and r.kind == "saturated"]
            live = [r for r in mine if r.cameras == cameras and r.kind == "live"]
            by_cameras[str(cameras)] = {
                "fps": _median([r.fps for r in sat]),
                "fps_rounds": [round(r.fps, 1) for r in sat],
                "service_cpu_us_per_frame": _median([r.service_cpu_us_per_frame for r in sat]),
                "broker_cpu_us_per_frame": _median([r.broker_cpu_us_per_frame for r in sat]),
                "live_e2e_p99_ms": _median([r.e2e_p99_ms for r in live]),
                "live_e2e_p50_ms": _median([r.e2e_p50_ms for r in live]),
            }
        profiles = [r for r in mine if r.kind == "profile"]
        out[variant] = {
            "commit": mine[0].commit if mine else None,
            "cameras": by_cameras,
            "profile": asdict(profiles[-1]) if profiles else None,
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    variants = list(s)
    model = report["settings"].get("model", {"backend": "instant"})
    served = (
        "instant model"
        if model["backend"] == "instant"
        else f"{model['backend']} {model['precision']} on {model.get('device') or 'the default device'}"
    )
    lines = [
        f"# The service's ceiling ({served}, embedded broker, Ped2 JPEGs)",
        "",
        f"`{report['command']}` ({report['date']})",
        "",
        "Sustained frames/s (median of rounds; the rounds in brackets), CPU per frame of the service "
        "and of the broker (µs), live capture-to-publish p50 / p99 at "
        f"{report['settings']['live_fps']:.0f} frames/s in all:",
        "",
        "| variant (commit) | cameras | frames/s | rounds | service µs/frame | broker µs/frame | "
        "live p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        for cameras, c in s[variant]["cameras"].items():
            lines.append(
                f"| {variant} ({s[variant]['commit']}) | {cameras} | **{c['fps']:.0f}** | "
                f"{', '.join(f'{v:.0f}' for v in c['fps_rounds'])} | {c['service_cpu_us_per_frame']:.0f} | "
                f"{c['broker_cpu_us_per_frame']:.0f} | {c['live_e2e_p50_ms']:.0f} / "
                f"{c['live_e2e_p99_ms']:.0f} |"
            )
    profiled = [v for v in variants if s[v]["profile"]]
    if profiled:
        cameras = s[profiled[0]]["profile"]["cameras"]
        lines += [
            "",
            f"The service's CPU per frame by stage (µs; py-spy at {PROFILE_RATE} Hz over a saturated run "
            f"of {cameras} cameras, every thread, samples waiting (in a select, a lock, a future) left "
            "out, split by the process's CPU time; `STAGES` in the script says which frames make a stage):",
            "",
            "| variant | " + " | ".join(STAGE_ORDER) + " | total | frames/s | samples |",
            "|---|" + "---|" * (len(STAGE_ORDER) + 3),
        ]
        for v in profiled:
            p = s[v]["profile"]
            stages = p["stages_us_per_frame"]
            lines.append(
                f"| {v} | "
                + " | ".join(f"{stages[k]:.0f}" for k in STAGE_ORDER)
                + f" | {p['service_cpu_us_per_frame']:.0f} | {p['fps']:.0f} | {p['profile_samples']} |"
            )
        lines += [
            "",
            "The main thread's wall time per frame by stage in the same runs (µs; waits included: a "
            "flush waits for acknowledgements, a commit for the broker's answer):",
            "",
            "| variant | " + " | ".join(STAGE_ORDER) + " | total |",
            "|---|" + "---|" * (len(STAGE_ORDER) + 1),
        ]
        for v in profiled:
            wall = s[v]["profile"]["main_thread_us_per_frame"]
            lines.append(
                f"| {v} | "
                + " | ".join(f"{wall[k]:.0f}" for k in STAGE_ORDER)
                + f" | {sum(wall.values()):.0f} |"
            )
    if report.get("clients"):
        lines += [
            "",
            "The Kafka clients alone, in one process on the same broker (CPU of the process per record, "
            "its background threads included):",
            "",
            "| client | what | records | records/s | CPU µs/record |",
            "|---|---|---|---|---|",
            *(
                f"| {c['client']} | {c['what']} | {c['records']} | {c['records_per_s']:.0f} | "
                f"{c['cpu_us_per_record']:.0f} |"
                for c in report["clients"]
            ),
        ]
    m = report["machine"]
    lines += [
        "",
        f"Goal: >= {report['targets']['fps_at_16_cameras']} frames/s at 16 cameras on "
        f"{m['cores']} cores (the broker and the service on the same cores). Load average (1/5/15 "
        f"min) before: {'/'.join(f'{v:.1f}' for v in m['load_before'])}, after: "
        f"{'/'.join(f'{v:.1f}' for v in m['load_after'])}, on cores shared with other jobs.",
    ]
    return "\n".join(lines) + "\n"


def served_model(args: argparse.Namespace) -> dict[str, Any]:
    """What the runs served: the instant model, or the backend, device and export of a real one."""
    if args.backend == "instant":
        return {"backend": "instant"}
    artifact = Path(args.artifact or args.checkpoint)
    meta_path = artifact / "model.json"
    precision = json.loads(meta_path.read_text())["precision"] if meta_path.is_file() else "fp32"
    return {"backend": args.backend, "precision": precision, "device": args.device, "artifact": str(artifact)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # The service subprocess: `--serve --config FILE`.
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root (test/ clips)")
    parser.add_argument("--checkpoint", default=str(REPO / "benchmarks/artifacts/anomem_ped2.safetensors"))
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--frames", type=int, default=6400, help="frames pre-loaded per saturated run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8, help="batching.max_batch (the default: 8)")
    parser.add_argument("--max-partitions", type=int, default=16, help="frames topic: min(cameras, this)")
    parser.add_argument("--live-fps", type=float, default=500.0, help="live runs: frames/s of all cameras")
    parser.add_argument("--live-seconds", type=float, default=6.0)
    parser.add_argument("--profile-cameras", type=int, default=16)
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, run beside this one")
    parser.add_argument("--baseline-name", default="before")
    parser.add_argument("--name", default="after", help="this tree's variant name")
    parser.add_argument(
        "--confluent-producer",
        action="store_true",
        help="also this tree with producer.client: confluent-kafka (variant NAME+confluent)",
    )
    parser.add_argument(
        "--clients", type=int, default=4800, help="records per client in the client comparison (0: none)"
    )
    parser.add_argument(
        "--backend",
        choices=("instant", "torch", "onnxruntime", "tensorrt"),
        default="instant",
        help="instant: the service without its model (this benchmark's); else `anomon run` serving "
        "--artifact on that backend: the service end to end",
    )
    parser.add_argument("--artifact", type=Path, help="a real model's export folder (default: --checkpoint)")
    parser.add_argument("--device", help="a real model's model.device (cpu, cuda[:N])")
    parser.add_argument("--engine-cache", type=Path, help="a real model's model.engine_cache (TensorRT)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/service_ceiling.json"))
    args = parser.parse_args()
    if args.serve:
        serve_instant(args.config)
        return
    if args.backend == "instant" and (args.artifact or args.device or args.engine_cache):
        parser.error("--artifact, --device and --engine-cache are for a real model: add --backend")

    from results_io import run_record
    from tqdm import tqdm

    from monitor.broker import EmbeddedBroker

    load_before = os.getloadavg()
    variants = [Variant(args.name, REPO)]
    if args.baseline is not None:
        variants.insert(0, Variant(args.baseline_name, args.baseline.resolve()))
    if args.confluent_producer:
        variants.append(Variant(f"{args.name}+confluent", REPO, "confluent-kafka"))
    work = Path(tempfile.mkdtemp(prefix="anomon-ceiling-"))
    frames = load_frames(Path(args.data))
    bench = Bench(args, frames, work)
    runs: list[Run] = []
    plan = [
        (round_no, cameras, kind)
        for round_no in range(1, args.rounds + 1)
        for cameras in args.cameras
        for kind in (("saturated", "live") if round_no == 1 else ("saturated",))
    ]
    if args.profile_cameras:
        plan += [(args.rounds + 1, args.profile_cameras, "profile")]
    with tqdm(total=len(plan) * len(variants), desc="runs", unit="run") as bar:
        for step, (round_no, cameras, kind) in enumerate(plan):
            # A broker per step: it never holds enough record batches to slow down (monitor/broker.py).
            with EmbeddedBroker(log_path=work / f"tansu-{round_no}-{cameras}-{kind}.log") as broker:
                # Rotated: no variant always runs first on a fresh broker.
                for variant in variants[step % len(variants) :] + variants[: step % len(variants)]:
                    run = bench.run(broker, variant, kind, round_no, cameras)
                    runs.append(run)
                    tqdm.write(
                        f"{variant.name} {kind} {cameras} cameras round {round_no}: {run.fps:.0f} frames/s, "
                        f"{run.service_cpu_us_per_frame:.0f} µs/frame, p99 {run.e2e_p99_ms:.0f} ms"
                    )
                    bar.update()
    clients: list[dict[str, Any]] = []
    if args.clients:
        with EmbeddedBroker(log_path=work / "tansu-clients.log") as broker:
            clients = client_costs(broker.bootstrap, frames, args.clients, args.max_partitions)
    report = {
        **run_record(),
        "machine": {
            "cores": os.cpu_count(),
            "broker": "embedded Tansu (memory storage), same machine",
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "settings": {
            "frames_per_saturated_run": args.frames,
            "max_batch": args.max_batch,
            "max_partitions": args.max_partitions,
            "live_fps": args.live_fps,
            "live_seconds": args.live_seconds,
            "frame_bytes_mean": float(np.mean([len(f) for f in frames])),
            "model": served_model(args),
        },
        "targets": {"fps_at_16_cameras": 2000},
        "summary": summarize(runs, [v.name for v in variants]),
        "runs": [asdict(r) for r in runs],
        "clients": clients,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)  # configs, logs, raw profiles; kept when a run fails


if __name__ == "__main__":
    main()
