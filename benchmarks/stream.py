"""The streaming service end to end on this CPU: cameras -> embedded broker -> `anomon run` -> scores.

Live runs: N cameras (1, 2, 4) replay Ped2 test clips at 10 frames/s each (capture time = send
time) into an N-partition frames topic while `anomon run` (live mode, ONNX Runtime fp32 export of
the committed checkpoint, default model settings: `model.workers: auto`) scores them. Latency =
capture to score published (`latency_ms.end_to_end` of each score) and capture to score received by
a consumer (live runs; the saturated runs read their scores after the service is done, so no
consumer shares the cores).

Saturation run: the frames are pre-loaded, then the service (replay mode) runs flat out; its
frames/s (first to last score published) is compared with the model alone (`model.runtime.bench`)
run the same way (as many threads calling the same session, each with as many intra-op threads)
at the batch size the service ran, timed just before and just after it in the same run. Both are
throughputs: frames over the time they took. Side by side: the default service (workers auto), one
worker of --threads threads, and that one worker without overlap.

    python benchmarks/stream.py --data ../shared/data/ucsd_ped2 --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import yaml
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from results_io import ANOMEM_ARTIFACT, REPO, RESULTS, repo_path, run_record
from tqdm import tqdm

from model.export import export_artifact
from model.runtime import open_runtime
from model.runtime.bench import measure, measure_concurrent
from monitor.broker import EmbeddedBroker
from monitor.config import ModelSettings
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.replay import find_clips, replay
from monitor.service import plan_model
from monitor.wire import ScoreMessage, decode

# Side by side in every round (kind, overlap, one worker of --threads threads?): the default service
# (`model.workers: auto`), one worker of --threads threads, and that one without overlap (serial).
SATURATED_KINDS = (
    ("saturated", True, False),
    ("saturated-one-worker", True, True),
    ("saturated-serial", False, True),
)
MODEL_CALLS = 40  # model-only calls timed before and after each round


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScoreReader(threading.Thread):
    """Consumes the scores topic from its start, noting when each score arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,  # as the service's consumer: Tansu holds fetches for the full wait
        )
        self.consumer.assign([TopicPartition(topic, 0)])
        self.raw: list[tuple[bytes, float]] = []  # decoded after the run: the harness stays light
        self.stop = threading.Event()
        self.live = True  # arrival times are receive times; False once read by `collect`

    def collect(self, expected: int, timeout_s: float = 60.0) -> None:
        """Read the scores after the run instead (the saturated runs: no consumer on the cores
        while the service works; arrival times are then unknown)."""
        self.live = False
        deadline = time.monotonic() + timeout_s
        while len(self.raw) < expected and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.raw.extend((record.value, float("nan")) for record in batch)
        self.consumer.close()

    def run(self) -> None:
        while not self.stop.is_set():
            for batch in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                self.raw.extend((record.value, now) for record in batch)
        self.consumer.close()

    @property
    def received(self) -> list[tuple[ScoreMessage, float]]:
        """Each score with the time it arrived (decoded and schema-checked here)."""
        out = []
        for value, when in self.raw:
            message = decode(value)
            assert isinstance(message, ScoreMessage)
            out.append((message, when))
        return out


def python_path(tree: Path) -> str:
    """PYTHONPATH for a subprocess importing `tree` first, then what this one was given (packages
    installed outside the environment, e.g. wheels unpacked into a folder on a GPU machine)."""
    return os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)


def cli_export(checkpoint: Path, out: Path, precision: str = "fp32") -> Path:
    """`anomon export` in a subprocess, as an operator exports a checkpoint."""
    command = [
        sys.executable,
        "-m",
        "monitor.cli",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": python_path(REPO)}
    subprocess.run([*command, "--precision", precision], cwd=REPO, env=env, check=True)
    return out


class Service:
    """`anomon run` as a subprocess with its metrics endpoint on a known port.

    Args:
        config: the service configuration (its `http` section is set here).
        work: where the config file and the log go.
        command: what runs it, given `--config FILE` after it; default `python -m monitor.cli run`.
        tree: the source tree it imports (PYTHONPATH); default this repository.
    """

    def __init__(
        self, config: dict[str, Any], work: Path, command: list[str] | None = None, tree: Path = REPO
    ) -> None:
        self.port = _free_port()
        config = {**config, "http": {"port": self.port}}
        path = work / f"run-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = (work / f"{path.stem}.log").open("w")
        env = {**os.environ, "PYTHONPATH": python_path(tree)}
        command = command or [sys.executable, "-m", "monitor.cli", "run"]
        self.process = subprocess.Popen(
            [*command, "--config", str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tree,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""
        except urllib.error.URLError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"anomon run exited with {self.process.returncode}; see {self.log.name}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"anomon run not ready within {timeout_s} s; see {self.log.name}")

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels) -> value."""
        _, text = self.get("/metrics")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        self.log.close()


def machine_record(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The machine a service benchmark ran on, with the load average before and after it."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "gpu": None,
        "broker": "embedded Tansu (memory storage), same machine",
        # Shared with other engineers' jobs: the load says how contended the cores were.
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": os.getloadavg(),
    }


def _total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


@dataclass
class Row:
    """One run's numbers."""

    scenario: str
    cameras: int
    mode: str
    input_fps: float
    frames_sent: int
    frames_scored: int
    frames_dropped: int
    processed_fps: float
    mean_batch: float
    inference_share: float  # the service's time in the model / first-to-last score: 1 = no overhead
    e2e_p50_ms: float
    e2e_p99_ms: float
    received_p50_ms: float
    received_p99_ms: float


def _row(
    scenario: str, cameras: int, mode: str, sent: int, input_fps: float, reader: ScoreReader, metrics: dict
) -> Row:
    arrivals = reader.received
    scores = [m for m, _ in arrivals]
    e2e = np.array([m.latency_ms.end_to_end for m in scores])
    received = np.array([(t - m.capture_ts.timestamp()) * 1e3 for m, t in arrivals] or [float("nan")])
    published = sorted(m.processed_ts.timestamp() for m in scores)
    span = published[-1] - published[0] if len(published) > 1 else float("nan")
    return Row(
        scenario=scenario,
        cameras=cameras,
        mode=mode,
        input_fps=input_fps,
        frames_sent=sent,
        frames_scored=len(scores),
        frames_dropped=int(_total(metrics, "anomon_frames_dropped_total")),
        processed_fps=(len(scores) - 1) / span,
        inference_share=_total(metrics, "anomon_inference_seconds_sum") / span,
        mean_batch=_total(metrics, "anomon_batch_size_sum")
        / max(1.0, _total(metrics, "anomon_batch_size_count")),
        e2e_p50_ms=float(np.percentile(e2e, 50)),
        e2e_p99_ms=float(np.percentile(e2e, 99)),
        received_p50_ms=float(np.percentile(received, 50)),
        received_p99_ms=float(np.percentile(received, 99)),
    )


def _wait_scored(
    reader: ScoreReader, service: Service, expected: int, timeout_s: float, desc: str, live: bool = True
) -> dict:
    """Until every frame sent is scored or dropped (or timeout); returns the service's metrics then.

    live: the reader consumes the scores as they come (receive times); otherwise the service's
    /metrics tell when it is done and the reader collects the scores afterwards.
    """
    deadline = time.monotonic() + timeout_s
    dropped, processed, scraped = 0, 0, 0.0
    with tqdm(total=expected, desc=desc, unit="frame") as bar:
        while time.monotonic() < deadline:
            # Scraping and parsing /metrics costs CPU on these 2 cores: once a second is enough.
            if time.monotonic() - scraped > 1.0:
                metrics = service.metrics()
                dropped = int(_total(metrics, "anomon_frames_dropped_total"))
                processed = int(_total(metrics, "anomon_frames_processed_total"))
                scraped = time.monotonic()
            done = (len(reader.raw) if live else processed) + dropped
            bar.update(done - bar.n)
            if done >= expected:
                break
            time.sleep(0.2)
    if live:
        time.sleep(0.5)  # the last scores' receive times
    else:
        reader.collect(expected - dropped)
    return service.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=repo_path(ANOMEM_ARTIFACT))
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root (test/ clips)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="ONNX Runtime threads of the one-worker service (the default one plans its own)",
    )
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--fps", type=float, default=10.0, help="frames/s per camera in the live runs")
    parser.add_argument("--clips", nargs="+", default=["01"], help="test clips each live camera replays")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--saturation-clips",
        nargs="+",
        default=["01", "02", "03", "04"],
        help="clips pre-loaded as 2 cameras",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturation rounds (model alone, each service kind)"
    )
    parser.add_argument("--out", default=str(RESULTS / "stream.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    out = Path(args.out)
    plan = plan_model(ModelSettings(backend="onnxruntime"))  # what the default service will run
    work = Path(tempfile.mkdtemp(prefix="anomon-stream-"))
    artifact = work / "ped2-fp32"
    export_artifact(args.checkpoint, artifact, "fp32")
    clips = find_clips(args.data, args.clips)
    rows: list[Row] = []
    model_only: list[dict[str, Any]] = []
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, client_id="anomon-bench")

        def config(
            name: str, partitions: int, mode: str, overlap: bool = True, one_worker: bool = False
        ) -> dict[str, Any]:
            topics = {k: f"bench.{name}.{k}" for k in ("frames", "scores", "alerts", "dead_letters")}
            create_topics(settings, {topics["frames"]: partitions, topics["scores"]: 1})
            return {
                "kafka": {"bootstrap_servers": broker.bootstrap},
                "consumer": {"group_id": f"bench-{name}"},
                "topics": topics,
                "model": {"artifact": str(artifact), "backend": "onnxruntime"}
                | ({"workers": 1, "threads": args.threads} if one_worker else {}),
                "intake": {"mode": mode},
                "batching": {"max_batch": args.max_batch, "overlap": overlap},
                # Alerts and snapshots are part of the work, as in production.
            }

        for cameras in args.cameras:
            name = f"live{cameras}"
            cfg = config(name, cameras, "live")
            service = Service(cfg, work)
            service.wait_ready()
            reader = ScoreReader(broker.bootstrap, cfg["topics"]["scores"])
            reader.start()
            producer = make_producer(settings)
            report = replay(
                clips, FramePublisher(producer, cfg["topics"]["frames"]), fps=args.fps, cameras=cameras
            )
            producer.close()
            metrics = _wait_scored(reader, service, len(report.sent), 60, f"{name} scoring")
            reader.stop.set()
            service.stop()
            rows.append(_row(name, cameras, "live", len(report.sent), args.fps * cameras, reader, metrics))
            print(rows[-1])

        # Saturation: pre-load, then let the service run flat out, each kind of SATURATED_KINDS.
        # This machine's speed drifts by tens of percent within minutes, so each round times the model
        # alone just before and after its services run, and the ratios quoted are round medians.
        default = open_runtime(artifact, "onnxruntime", threads=plan.threads)
        one_worker = open_runtime(artifact, "onnxruntime", threads=args.threads)

        def model_alone(when: str) -> dict[str, Any]:
            """The model alone as each service kind runs it: as planned, and one worker."""
            calls = MODEL_CALLS // plan.workers
            planned = measure_concurrent(default, args.max_batch, workers=plan.workers, calls=calls)
            one = measure(one_worker, args.max_batch, calls=MODEL_CALLS)
            return {"when": when, "default": asdict(planned), "one_worker": asdict(one)}

        model_only.append(model_alone("round 1 before"))
        for round_no in range(1, args.rounds + 1):
            for kind, overlap, one in SATURATED_KINDS:
                name = f"{kind}#{round_no}"
                cfg = config(name.replace("#", "-"), 2, "replay", overlap, one)
                producer = make_producer(settings)
                preload = replay(
                    find_clips(args.data, args.saturation_clips),
                    FramePublisher(producer, cfg["topics"]["frames"]),
                    fps=1000,
                    cameras=2,
                )
                producer.close()
                # No consumer of the scores runs beside the service: they are read once it is done.
                reader = ScoreReader(broker.bootstrap, cfg["topics"]["scores"])
                service = Service(cfg, work)
                metrics = _wait_scored(reader, service, len(preload.sent), 600, f"{name} scoring", live=False)
                service.stop()
                mode = "replay (pre-loaded)" + ("" if overlap else ", no overlap")
                mode += f", 1 worker x {args.threads} threads" if one else ""
                rows.append(_row(name, 2, mode, len(preload.sent), float("nan"), reader, metrics))
                print(rows[-1])
            model_only.append(model_alone(f"round {round_no} after"))

    rounds = []
    for round_no in range(1, args.rounds + 1):
        before, after = model_only[round_no - 1], model_only[round_no]
        model_fps = {
            k: (before[k]["throughput_fps"] + after[k]["throughput_fps"]) / 2 for k in before if k != "when"
        }
        fps = {r.scenario.split("#")[0]: r.processed_fps for r in rows if r.scenario.endswith(f"#{round_no}")}
        share = next(r.inference_share for r in rows if r.scenario == f"saturated#{round_no}")
        rounds.append(
            {
                "round": round_no,
                "model_only_fps": model_fps["default"],
                "model_only_one_worker_fps": model_fps["one_worker"],
                "ratio": fps["saturated"] / model_fps["default"],
                "ratio_one_worker": fps["saturated-one-worker"] / model_fps["one_worker"],
                "ratio_serial": fps["saturated-serial"] / model_fps["one_worker"],
                "default_vs_one_worker_model": fps["saturated"] / model_fps["one_worker"],
                "inference_share": share,
            }
        )
    report_doc = {
        **run_record(args.checkpoint),
        "machine": machine_record(load_before),
        "model": {
            "checkpoint": args.checkpoint,
            "backend": "onnxruntime",
            "precision": "fp32",
            "workers": plan.workers,  # what `model.workers: auto` planned here
            "threads": plan.threads,
            "one_worker_threads": args.threads,
        },
        "rows": [asdict(r) for r in rows],
        "model_only": model_only,
        "saturation_rounds": rounds,
        **{
            name: float(np.median([r[key] for r in rounds]))
            for name, key in (
                ("saturation_ratio", "ratio"),
                ("saturation_ratio_one_worker", "ratio_one_worker"),
                ("saturation_ratio_serial", "ratio_serial"),
                ("default_vs_one_worker_model", "default_vs_one_worker_model"),
                ("saturated_inference_share", "inference_share"),
            )
        },
        "targets": {"saturation_ratio": 0.85, "live_p99_ms_below_capacity": 250},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report_doc))
    print(markdown(report_doc))
    shutil.rmtree(work, ignore_errors=True)  # the export and the logs; kept when a run fails


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Streaming service on this CPU (embedded broker, ONNX Runtime fp32)",
        "",
        f"`{report['command']}` ({report['date']})",
        "",
        "| run | cameras | input fps | sent | scored | dropped | processed fps | mean batch | "
        "model share | e2e p50 ms | e2e p99 ms | received p50 ms | received p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['cameras']} | {r['input_fps']:.0f} | {r['frames_sent']} | "
            f"{r['frames_scored']} | {r['frames_dropped']} | {r['processed_fps']:.1f} | "
            f"{r['mean_batch']:.1f} | {r['inference_share']:.0%} | "
            f"{r['e2e_p50_ms']:.0f} | {r['e2e_p99_ms']:.0f} | {r['received_p50_ms']:.0f} | "
            f"{r['received_p99_ms']:.0f} |"
        )
    model = ", ".join(
        f"{alone['when']}: {alone['default']['throughput_fps']:.1f} "
        f"(one worker {alone['one_worker']['throughput_fps']:.1f})"
        for alone in report["model_only"]
    )
    per_round = ", ".join(
        f"{r['ratio']:.2f} (one worker {r['ratio_one_worker']:.2f}, serial {r['ratio_serial']:.2f})"
        for r in report["saturation_rounds"]
    )
    m = report["model"]
    lines += [
        "",
        f"The default service here: `model.workers: auto` planned {m['workers']} worker(s) of "
        f"{m['threads'] or 'default'} thread(s). Model only, same backend and batch "
        f"({report['model_only'][0]['default']['batch']}), run the same way ({m['workers']} thread(s) "
        f"calling one session of {m['threads'] or 'default'} thread(s) at once; one worker: one "
        f"session of {m['one_worker_threads']} threads), frames/s: {model}.",
        f"Saturation ratio (saturated default service fps / mean of the model-only fps just before "
        f"and after, median of {len(report['saturation_rounds'])} rounds): "
        f"**{report['saturation_ratio']:.2f}** (target {report['targets']['saturation_ratio']}); per "
        f"round: {per_round}. Against the one-worker model alone, the default service's frames/s are "
        f"{report['default_vs_one_worker_model']:.2f} of it. One worker of {m['one_worker_threads']} "
        f"threads, against its own model alone: {report['saturation_ratio_one_worker']:.2f}; the same "
        f"without overlap (`batching.overlap: false`: each batch finished before the next is polled): "
        f"{report['saturation_ratio_serial']:.2f}. In the default saturated runs the service spent a "
        f"median {report['saturated_inference_share']:.0%} of its wall time in the model (with two "
        "workers, up to 200%: both busy).",
        f"Load average (1/5/15 min) before: {_load(report['machine']['load_average_1_5_15_before'])}, "
        f"after: {_load(report['machine']['load_average_1_5_15_after'])} on "
        f"{report['machine']['cores']} cores shared with other jobs.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
