"""Load figures for the service on this CPU: capacity, overload at 2x, and a soak at 80% of capacity.

The service runs as `anomon run` in its own process (so its resident memory is its own), against an
embedded broker; this script produces UCSD Ped2 test frames as N cameras at a paced rate, scrapes the
service's /metrics every few seconds, samples its RSS from /proc, and at the end reads the scores
and dead-letter topics back to account for every frame sent (scored, dead-lettered or dropped).

    python benchmarks/reliability.py --phase capacity overload soak --soak-minutes 30

Each phase updates its own key of benchmarks/results/reliability.json, so a long soak can be run
on its own later; the markdown table is re-rendered from the JSON each time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import yaml
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import ANOMEM_ARTIFACT, RESULTS, run_record  # noqa: E402
from stream import cli_export  # noqa: E402

from monitor.broker import EmbeddedBroker, free_port  # noqa: E402
from monitor.ingest import FramePublisher, encode_jpeg  # noqa: E402
from monitor.kafka_client import KafkaSettings, ProducerSettings, create_topics, make_producer  # noqa: E402

CHECKPOINT = ANOMEM_ARTIFACT
PED2 = ROOT.parent / "shared" / "data" / "ucsd_ped2"
CAMERAS = 4
PROGRESS_EVERY_S = 30.0
FRAME_JPEG_QUALITY = 50


FAULTS = "tests/monitor/test_faults.py::"
SECURITY = "tests/monitor/test_security.py::"
# What was tried, by which test: rendered into the JSON and the markdown beside the load figures.
TRIED = [
    {
        "kind": "fault",
        "what": "broker link cut mid-stream (TCP proxy drops and refuses connections), restored",
        "result": "not ready while cut, ready after, every frame scored, "
        "duplicates <= model workers + 1 batches, 0 lost",
        "test": FAULTS + "test_broker_cut_mid_stream_service_goes_unready_resumes_and_loses_nothing",
    },
    {
        "kind": "fault",
        "what": "a second instance joins the group mid-stream (rebalance under load)",
        "result": "union of scores covers every frame, "
        "duplicates <= the batches each instance had in its models, 0 lost",
        "test": FAULTS + "test_rebalance_under_load_loses_nothing_and_bounds_duplicates",
    },
    {
        "kind": "fault",
        "what": "the consumer stops returning records while they wait (as seen in soaks; reproduced by "
        "pausing the real consumer's partitions)",
        "result": "detected after 15 s of silence with lag, consumer replaced, every frame scored, 0 lost",
        "test": FAULTS + "test_a_consumer_whose_polls_stall_is_replaced_and_loses_nothing",
    },
    {
        "kind": "fault",
        "what": "every new consumer stuck too (a broker that answers but serves no records)",
        "result": "each reconnect waits twice the silence before it (no churn); once records flow, the "
        "wait is back to 15 s and every frame is scored",
        "test": FAULTS + "test_reconnects_back_off_while_stuck_and_reset_when_records_flow",
    },
    {
        "kind": "fault",
        "what": "runtime raises on a batch, again on one frame, returns NaN for two frames",
        "result": "1 inference-failed + 2 invalid-score dead letters, no alert from NaN, the rest scored",
        "test": FAULTS + "test_runtime_failures_are_dead_lettered_by_policy_and_nan_never_alerts",
    },
    {
        "kind": "bad input",
        "what": "invalid UTF-8 key, unknown schema 2, malformed frame-index, GIF, "
        "PNG header claiming 100000x100000, truncated JPEG, empty value",
        "result": "each dead-lettered with its reason and source, the bomb refused before decoding; "
        "good frames after them scored",
        "test": FAULTS + "test_bad_records_through_the_service_are_dead_lettered_with_their_reason",
    },
    {
        "kind": "bad input",
        "what": "a header name that is not UTF-8, between good frames (kafka-python decodes header "
        "names inside poll(): unguarded, one such record fails every poll after it)",
        "result": "dead-lettered as bad-header with its key and value; the frames around it scored",
        "test": FAULTS + "test_a_header_name_that_is_not_utf8_is_dead_lettered_not_a_poison_pill",
    },
    {
        "kind": "bad input",
        "what": "hypothesis: arbitrary keys, headers, values, timestamps; arbitrary and "
        "corrupted image bytes",
        "result": "only FrameError (a dead-letter reason), never a crash",
        "test": "tests/monitor/test_frames.py (property tests)",
    },
    {
        "kind": "security",
        "what": "Kafka over TLS (stunnel in front of the broker), CA verified",
        "result": "frames in, scores and dead letters out over TLS; a client trusting another CA, "
        "or plaintext, is refused",
        "test": "tests/monitor/test_security.py",
    },
    {
        "kind": "security",
        "what": "SASL password from a file, CLI run against an unreachable broker",
        "result": "password reaches the client settings, never stdout, stderr, logs, repr or /metrics",
        "test": SECURITY + "test_the_sasl_password_never_reaches_logs_errors_or_metrics",
    },
    {
        "kind": "security",
        "what": "tampered checkpoint weights, foreign files, tampered or foreign engines",
        "result": "refused before loading (SHA-256 in metadata; safetensors, no pickle)",
        "test": "tests/model/test_checkpoint.py, tests/model/test_runtime.py",
    },
]


@dataclass
class Sample:
    """One scrape of the running service."""

    t: float  # seconds since the phase started
    rss_mb: float
    processed: float
    dropped: float
    dead_letters: float
    lag: float
    sent: int
    publish_errors: float
    inference_errors: float
    ready: float


@dataclass
class Accounting:
    """Every frame sent, and where it went."""

    sent: int
    scored_unique: int
    scored_duplicates: int
    dead_lettered: int
    dropped: int
    dropped_per_camera: dict[str, float]
    lost: int


@dataclass
class PhaseResult:
    """One load phase's figures."""

    phase: str
    mode: str
    rate_fps: float
    seconds: float
    accounting: Accounting
    processed_fps: float
    end_to_end_ms: dict[str, float]
    rss_mb: dict[str, float] = field(default_factory=dict)
    lag_max_after_warmup: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def ped2_frames(limit: int = 400, quality: int = FRAME_JPEG_QUALITY) -> list[bytes]:
    """The first Ped2 test frames (240x360) as JPEG payloads at `quality`.

    Re-encoded smaller (6.7 KB at 50 instead of 24 KB) because the embedded broker keeps every record
    in memory: 30 minutes at 70 frames/s is 126000 frames, 0.8 GB at 6.7 KB and 3 GB at 24 KB.
    Decoding and resizing stay the same work per frame.
    """
    files = sorted((PED2 / "test").glob("*/*.jpg"))[:limit]
    if not files:
        raise SystemExit(f"no Ped2 test frames under {PED2}")
    frames = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    return [encode_jpeg(frame, quality) for frame in frames]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric name -> labels -> value, from the text exposition."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    return sum(metrics.get(name, {}).values())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Service:
    """`anomon run` in a child process with its own config; stopped with SIGTERM (drain)."""

    def __init__(self, workdir: Path, bootstrap: str, frames_topic: str, mode: str, artifact: Path) -> None:
        self.port = free_port()
        self.topics = {
            "frames": frames_topic,
            "scores": frames_topic + ".scores",
            "alerts": frames_topic + ".alerts",
            "dead_letters": frames_topic + ".dlq",
        }
        cfg = {
            "kafka": {"bootstrap_servers": bootstrap},
            "consumer": {"group_id": frames_topic},
            "topics": self.topics,
            # One model thread: the cameras, the broker and the score reader share the 2 cores (and
            # the committed results were measured so, before `model.workers: auto` became the default).
            "model": {"artifact": str(artifact), "backend": "onnxruntime", "threads": 1, "workers": 1},
            "batching": {"max_batch": 8, "max_wait_ms": 20},
            "intake": {"mode": mode, "max_frame_age_seconds": 2.0, "decode_workers": 1},
            "http": {"host": "127.0.0.1", "port": self.port},
        }
        path = workdir / f"{frames_topic}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / f"{frames_topic}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(path)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        return scrape(self.url + "/metrics")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the service exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the service was not ready within {timeout_s} s; see {self.log_path}")

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = -9
        self._log.close()
        return code


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """Every record of a topic, from the start, until nothing new arrives for 2 s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


class Producer(threading.Thread):
    """Produces the payloads round-robin over the cameras at `rate` frames/s in all (live timestamps)."""

    def __init__(self, publisher: FramePublisher, payloads: list[bytes], rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.publisher, self.payloads, self.rate, self.seconds = publisher, payloads, rate, seconds
        self.sent = 0

    def run(self) -> None:
        start = time.monotonic()
        n = int(self.rate * self.seconds)
        for i in range(n):
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            camera, index = f"cam-{i % CAMERAS + 1}", i // CAMERAS
            payload = self.payloads[index % len(self.payloads)]
            self.publisher.send(camera, payload, "image/jpeg", index, time.time_ns())
            self.sent += 1
            if i % 50 == 0:
                self.publisher.producer.flush()
        self.publisher.flush()


def account(bootstrap: str, service: Service, sent: int, final: dict[str, Any]) -> Accounting:
    scores = read_topic(bootstrap, service.topics["scores"])
    letters = read_topic(bootstrap, service.topics["dead_letters"])
    keys = [(json.loads(r.value)["camera_id"], json.loads(r.value)["frame_index"]) for r in scores]
    unique = len(set(keys))
    dropped = total(final, "anomon_frames_dropped_total")
    per_camera: dict[str, float] = {}
    for labels, value in final.get("anomon_frames_dropped_total", {}).items():
        camera = dict(labels)["camera"]
        per_camera[camera] = per_camera.get(camera, 0) + value
    return Accounting(
        sent=sent,
        scored_unique=unique,
        scored_duplicates=len(keys) - unique,
        dead_lettered=len(letters),
        dropped=int(dropped),
        dropped_per_camera=per_camera,
        lost=max(0, sent - unique - len(letters) - int(dropped)),
    )


def latency_ms(bootstrap: str, topic: str) -> dict[str, float]:
    values = sorted(json.loads(r.value)["latency_ms"]["end_to_end"] for r in read_topic(bootstrap, topic))
    if not values:
        return {}
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1], 1)}


def run_phase(
    name: str,
    bootstrap: str,
    workdir: Path,
    artifact: Path,
    mode: str,
    rate: float,
    seconds: float,
    preload: int = 0,
    warmup_s: float = 0.0,
    every_s: float = 5.0,
    linger_ms: int = 5,
) -> PhaseResult:
    """Start a service, produce at `rate` (or preload frames and run flat out), sample, account.

    `linger_ms`: how long the cameras' producer gathers frames into one record batch per partition.
    """
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    topic = f"rel.{name}.{int(time.time())}"
    create_topics(settings, {topic: CAMERAS})
    payloads = ped2_frames()
    tuning = ProducerSettings(linger_ms=linger_ms, batch_size=1 << 20)
    publisher = FramePublisher(make_producer(settings, tuning), topic)
    if preload:
        for i in range(preload):
            publisher.send(
                f"cam-{i % CAMERAS + 1}",
                payloads[(i // CAMERAS) % len(payloads)],
                "image/jpeg",
                i // CAMERAS,
                time.time_ns(),
            )
        publisher.flush()
    service = Service(workdir, bootstrap, topic, mode, artifact)
    service.wait_ready()
    producer = Producer(publisher, payloads, rate, seconds) if not preload else None
    samples: list[Sample] = []
    start = time.monotonic()
    if producer is not None:
        producer.start()
    sent = preload

    def accounted(m: dict[str, Any]) -> float:
        return (
            total(m, "anomon_frames_processed_total")
            + total(m, "anomon_frames_dropped_total")
            + total(m, "anomon_dead_letters_total")
        )

    first_processed: float | None = None
    printed = 0.0
    while True:
        time.sleep(every_s if producer is not None else 0.5)
        m = service.metrics()
        sent = producer.sent if producer is not None else preload
        now = time.monotonic() - start
        if first_processed is None and total(m, "anomon_frames_processed_total") > 0:
            first_processed = now
        samples.append(
            Sample(
                t=round(now, 1),
                rss_mb=round(rss_mb(service.process.pid), 1),
                processed=total(m, "anomon_frames_processed_total"),
                dropped=total(m, "anomon_frames_dropped_total"),
                dead_letters=total(m, "anomon_dead_letters_total"),
                lag=total(m, "anomon_consumer_lag_records"),
                sent=sent,
                publish_errors=total(m, "anomon_publish_errors_total"),
                inference_errors=total(m, "anomon_inference_errors_total"),
                ready=total(m, "anomon_ready"),
            )
        )
        if now - printed >= PROGRESS_EVERY_S:  # a soak runs for half an hour: say how it goes
            printed = now
            last = samples[-1]
            print(
                f"{name}: {now:.0f}/{seconds:.0f} s, sent {last.sent}, scored {last.processed:.0f}, "
                f"dropped {last.dropped:.0f}, lag {last.lag:.0f}, RSS {last.rss_mb:.0f} MB",
                flush=True,
            )
        done_producing = producer is None or not producer.is_alive()
        if done_producing and accounted(m) >= sent:
            break
        if done_producing and now > seconds + 120:
            break  # the backlog did not drain: accounted as lost below
    elapsed = time.monotonic() - start
    final = service.metrics()
    code = service.stop()
    publisher.producer.close()
    accounting = account(bootstrap, service, sent, final)
    processed = total(final, "anomon_frames_processed_total")
    busy_from = first_processed or 0.0
    after = [s for s in samples if s.t >= warmup_s]
    rss = [s.rss_mb for s in after]
    result = PhaseResult(
        phase=name,
        mode=mode,
        rate_fps=rate,
        seconds=round(elapsed, 1),
        accounting=accounting,
        processed_fps=round(processed / max(1e-9, elapsed - busy_from if preload else elapsed), 2),
        end_to_end_ms=latency_ms(bootstrap, service.topics["scores"]),
        errors={
            "publish_errors": total(final, "anomon_publish_errors_total"),
            "inference_errors": total(final, "anomon_inference_errors_total"),
            "consumer_reconnects": total(final, "anomon_consumer_reconnects_total"),
            "exit_code": code,
        },
        samples=samples,
    )
    if rss:
        minute = max(1, int(60 / every_s))
        base, last = statistics.median(rss[:minute]), statistics.median(rss[-minute:])
        result.rss_mb = {
            "after_warmup": base,
            "end": last,
            "max": max(rss),
            "growth_pct": round(100 * (last - base) / base, 2),
        }
        result.lag_max_after_warmup = max(s.lag for s in after)
    return result


def render_markdown(data: dict[str, Any]) -> str:
    lines = ["# Reliability on this CPU", "", f"`{data.get('command', '')}` ({data.get('date', '')})", ""]
    lines += [
        "| phase | mode | rate fps | seconds | sent | scored | dup | DLQ | dropped | lost | e2e p50 ms |"
        " e2e p99 ms | RSS growth % | max lag | errors |",
        "|" + "---|" * 15,
    ]
    for name in ("capacity", "overload", "soak"):
        p = data.get("phases", {}).get(name)
        if not p:
            continue
        a = p["accounting"]
        lines.append(
            f"| {name} | {p['mode']} | {p['rate_fps']} | {p['seconds']} | {a['sent']} | "
            f"{a['scored_unique']} | "
            f"{a['scored_duplicates']} | {a['dead_lettered']} | {a['dropped']} | {a['lost']} | "
            f"{p['end_to_end_ms'].get('p50', '')} | {p['end_to_end_ms'].get('p99', '')} | "
            f"{p['rss_mb'].get('growth_pct', '')} | {p['lag_max_after_warmup']} | "
            + ", ".join(f"{k} {v:g}" for k, v in p["errors"].items() if v)
            + " |"
        )
    lines += [f"\n{note}" for note in data.get("notes", [])]
    lines += ["", "| tried | what | result |", "|---|---|---|"]
    lines += [f"| {r['kind']} | {r['what']} | {r['result']} |" for r in data.get("tried", TRIED)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--phase",
        nargs="*",
        choices=("capacity", "overload", "soak"),
        default=[],
        help="none: re-render only",
    )
    parser.add_argument("--capacity-fps", type=float, help="skip measuring: use this capacity")
    parser.add_argument("--overload-seconds", type=float, default=60)
    parser.add_argument("--soak-minutes", type=float, default=30)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/anomon-reliability"))
    parser.add_argument("--json", type=Path, default=RESULTS / "reliability.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    data.setdefault("phases", {})
    if args.phase:
        record = run_record(CHECKPOINT)
        if data.get("artifacts") != record["artifacts"]:  # another artifact's figures are not mixed in
            data = {"phases": {}}
        data.update(record)
    data["tried"] = TRIED
    data["machine"] = {"cpus": os.cpu_count(), "note": "2 cores shared with other jobs"}

    artifact = args.workdir / "export"
    if args.phase:  # exported afresh: a folder left by an earlier run may hold an older checkpoint
        cli_export(CHECKPOINT, artifact)
    capacity = args.capacity_fps or data.get("capacity_fps")

    def save() -> None:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(render_markdown(data))

    if not args.phase:
        save()
        return
    with EmbeddedBroker(log_path=args.workdir / "tansu.log") as broker:
        if "capacity" in args.phase:
            result = run_phase(
                "capacity", broker.bootstrap, args.workdir, artifact, "replay", 0, 0, preload=1000
            )
            capacity = result.processed_fps
            data["capacity_fps"] = capacity
            data["phases"]["capacity"] = asdict(result)
            save()
            print(f"capacity: {capacity} frames/s", flush=True)
        if capacity is None:
            raise SystemExit("no capacity measured yet: run --phase capacity first or pass --capacity-fps")
        if "overload" in args.phase:
            result = run_phase(
                "overload",
                broker.bootstrap,
                args.workdir,
                artifact,
                "live",
                round(2 * capacity, 1),
                args.overload_seconds,
                warmup_s=10,
            )
            data["phases"]["overload"] = asdict(result)
            # What the service scores when offered more than it can take, with the producer and the
            # broker on the same cores: the capacity the soak's 80% is taken of.
            data["sustained_fps"] = result.processed_fps
            save()
            print(f"overload: {result.accounting} e2e {result.end_to_end_ms}", flush=True)
        if "soak" in args.phase:
            result = run_phase(
                "soak",
                broker.bootstrap,
                args.workdir,
                artifact,
                "live",
                round(0.8 * (data.get("sustained_fps") or capacity), 1),
                args.soak_minutes * 60,
                warmup_s=120,
                every_s=10,
                # The embedded broker lists every stored batch of a partition on each fetch (no
                # index, no retention): one batch per frame, 30 minutes at 70 frames/s were more
                # than it could list within a fetch wait after about 12 minutes. Cameras batching
                # half a second of frames store 8 batches a second instead of 70.
                linger_ms=500,
            )
            data["phases"]["soak"] = asdict(result)
            save()
            print(
                f"soak: {result.accounting} rss {result.rss_mb} lag {result.lag_max_after_warmup}", flush=True
            )


if __name__ == "__main__":
    main()
