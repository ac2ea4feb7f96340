"""A fleet on this CPU: 8 cameras with 8 distinct models against 8 cameras sharing 1 model.

The distinct models are the committed AnoMem checkpoint with its memory items perturbed by a
little noise, one seed per model, each saved (its own weights sha256) and exported to ONNX fp32:
the same architecture and cost as 8 scenes learned separately. Both services read a model store
(`anomon run --store`): the shared one holds a default only, the distinct one a model per camera.

Per round, side by side (shared, then distinct):
- saturated: the cameras' frames are pre-loaded and the service (replay mode) scores them flat
  out; aggregate frames/s = scores / (first to last publish);
- live: each camera sends at --live-fps (capture time = send time); latency = capture to score
  published (`latency_ms.end_to_end` of each score), p50 and p99.
The service's resident memory (VmRSS) is read once its models are loaded.

Growth: in this process, --grow distinct models opened one after another (ONNX Runtime, the
service's threads), with the load time of each and the process RSS after each.

    python benchmarks/fleet.py --data ../shared/data/ucsd_ped2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import ANOMEM_ARTIFACT, RESULTS, repo_path, run_record
from stream import ScoreReader, Service, _total, _wait_scored, machine_record
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.export import export_artifact
from model.runtime import open_runtime
from model.runtime.bench import sample_frames
from monitor.broker import EmbeddedBroker
from monitor.config import ModelSettings
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.replay import camera_ids, find_clips, replay
from monitor.service import plan_model
from monitor.store import ModelStore

CAMERA_PREFIX = "cam"


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def distinct_models(checkpoint: Path, count: int, work: Path) -> list[Path]:
    """`count` exports of the checkpoint, each with its memory items perturbed by its own seed."""
    state, meta = load_checkpoint(checkpoint)
    memory_keys = [k for k in state if k.startswith("memories.") and k.endswith(".slots")]
    if not memory_keys:
        raise SystemExit(f"{checkpoint}: no memory tensors to perturb ({', '.join(sorted(state)[:5])}...)")
    out = []
    for index in tqdm(range(count), desc="export distinct models", unit="model"):
        generator = torch.Generator().manual_seed(index)
        varied = dict(state)
        for key in memory_keys:
            noise = torch.randn(state[key].shape, generator=generator, dtype=state[key].dtype)
            varied[key] = state[key] + 1e-3 * state[key].std() * noise
        path = work / f"model-{index}.safetensors"
        save_checkpoint(path, varied, meta.model_copy(update={"version": f"{meta.version}-fleet{index}"}))
        export_artifact(path, work / f"model-{index}", "fp32")
        out.append(work / f"model-{index}")
    return out


@dataclass
class Row:
    """One service run."""

    scenario: str  # shared | distinct
    round: int
    mode: str  # saturated | live
    cameras: int
    models: int
    frames_sent: int
    frames_scored: int
    frames_dropped: int
    processed_fps: float
    mean_batch: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    cpu_ms_per_frame: float  # the service's CPU time per frame scored (robust to other jobs' load)
    service_rss_mb: float
    models_loaded: int


def _processed(service: Service) -> int:
    return int(_total(service.metrics(), "anomon_frames_processed_total"))


def _row(
    scenario: str,
    round_no: int,
    mode: str,
    cameras: int,
    sent: int,
    reader: ScoreReader,
    service: Service,
    cpu_from: tuple[float, int],
) -> Row:
    metrics = service.metrics()
    cpu = cpu_seconds(service.process.pid) - cpu_from[0]
    processed = int(_total(metrics, "anomon_frames_processed_total")) - cpu_from[1]
    scores = [m for m, _ in reader.received]
    published = sorted(m.processed_ts.timestamp() for m in scores)
    span = published[-1] - published[0] if len(published) > 1 else float("nan")
    e2e = np.array([m.latency_ms.end_to_end for m in scores] or [float("nan")])
    return Row(
        scenario=scenario,
        round=round_no,
        mode=mode,
        cameras=cameras,
        models=len({m.model.sha256 for m in scores}),
        frames_sent=sent,
        frames_scored=len(scores),
        frames_dropped=int(_total(metrics, "anomon_frames_dropped_total")),
        processed_fps=(len(scores) - 1) / span,
        mean_batch=_total(metrics, "anomon_batch_size_sum")
        / max(1.0, _total(metrics, "anomon_batch_size_count")),
        e2e_p50_ms=float(np.percentile(e2e, 50)),
        e2e_p99_ms=float(np.percentile(e2e, 99)),
        cpu_ms_per_frame=1e3 * cpu / max(1, processed),
        service_rss_mb=rss_bytes(service.process.pid) / 2**20,
        models_loaded=int(_total(metrics, "anomon_models_loaded")),
    )


def grow(models: list[Path], threads: int | None) -> list[dict[str, float]]:
    """Open the models one after another in this process: load time and RSS after each."""
    opened, steps = [], []
    base = rss_bytes()
    for index, artifact in enumerate(tqdm(models, desc="load models", unit="model"), start=1):
        started = time.perf_counter()
        runtime = open_runtime(artifact, "onnxruntime", threads=threads)
        runtime.infer(sample_frames(runtime, 1))  # the first call allocates
        seconds = time.perf_counter() - started
        opened.append(runtime)
        steps.append({"models": index, "load_s": seconds, "rss_growth_mb": (rss_bytes() - base) / 2**20})
    for runtime in opened:
        runtime.close()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=repo_path(ANOMEM_ARTIFACT))
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root (test/ clips)")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--clips", nargs="+", default=["01"], help="test clips each camera replays")
    parser.add_argument("--live-fps", type=float, default=2.0, help="frames/s per camera in the live runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grow", type=int, default=32, help="distinct models in the load-growth run")
    parser.add_argument("--out", default=str(RESULTS / "fleet.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    plan = plan_model(ModelSettings(backend="onnxruntime"))
    work = Path(tempfile.mkdtemp(prefix="anomon-fleet-"))
    models = distinct_models(Path(args.checkpoint), max(args.cameras, args.grow), work)
    ids = camera_ids(args.cameras, CAMERA_PREFIX)
    stores = {k: ModelStore(work / f"store-{k}", create=True) for k in ("shared", "distinct")}
    stores["shared"].add(models[0], camera=None)
    for camera, artifact in zip(ids, models, strict=False):
        stores["distinct"].add(artifact, camera=camera)
    clips = find_clips(args.data, args.clips)
    rows: list[Row] = []
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, client_id="anomon-fleet-bench")

        def run(scenario: str, round_no: int, mode: str) -> Row:
            name = f"{scenario}-{mode}-{round_no}"
            topics = {k: f"fleet.{name}.{k}" for k in ("frames", "scores", "alerts", "dead_letters")}
            create_topics(settings, {topics["frames"]: args.cameras, topics["scores"]: 1})
            cfg = {
                "kafka": {"bootstrap_servers": broker.bootstrap},
                "consumer": {"group_id": f"fleet-{name}"},
                "topics": topics | {"thumbnails": f"fleet.{name}.thumbnails"},
                "model": {"store": str(stores[scenario].root), "backend": "onnxruntime"},
                "intake": {"mode": "replay" if mode == "saturated" else "live"},
            }
            publisher = FramePublisher(make_producer(settings), topics["frames"])
            reader = ScoreReader(broker.bootstrap, topics["scores"])
            if mode == "saturated":  # pre-loaded; no consumer on the cores while the service works
                sent = replay(clips, publisher, fps=1000, cameras=args.cameras, camera_prefix=CAMERA_PREFIX)
                service = Service(cfg, work)
                while (processed := _processed(service)) == 0:  # CPU from the first score on
                    time.sleep(0.05)
                cpu_from = (cpu_seconds(service.process.pid), processed)
                _wait_scored(reader, service, len(sent.sent), 900, f"{name} scoring", live=False)
            else:
                service = Service(cfg, work)
                service.wait_ready()
                cpu_from = (cpu_seconds(service.process.pid), _processed(service))
                reader.start()
                sent = replay(
                    clips, publisher, fps=args.live_fps, cameras=args.cameras, camera_prefix=CAMERA_PREFIX
                )
                _wait_scored(reader, service, len(sent.sent), 120, f"{name} scoring")
                reader.stop.set()
            publisher.producer.close()
            row = _row(scenario, round_no, mode, args.cameras, len(sent.sent), reader, service, cpu_from)
            service.stop()
            print(row)
            return row

        for round_no in range(1, args.rounds + 1):
            for mode in ("saturated", "live"):
                for scenario in ("shared", "distinct"):
                    rows.append(run(scenario, round_no, mode))
    growth = grow(models[: args.grow], plan.threads)

    def pick(scenario: str, mode: str) -> list[Row]:
        return [r for r in rows if r.scenario == scenario and r.mode == mode]

    ratios = [
        d.processed_fps / s.processed_fps
        for s, d in zip(pick("shared", "saturated"), pick("distinct", "saturated"), strict=True)
    ]
    rss = {k: float(np.median([r.service_rss_mb for r in pick(k, "live")])) for k in ("shared", "distinct")}
    cpu = {
        k: float(np.median([r.cpu_ms_per_frame for r in pick(k, "saturated")]))
        for k in ("shared", "distinct")
    }
    report = {
        **run_record(args.checkpoint),
        "machine": machine_record(load_before),
        "model": {
            "backend": "onnxruntime",
            "precision": "fp32",
            "workers": plan.workers,
            "threads": plan.threads,
        },
        "cameras": args.cameras,
        "live_fps_per_camera": args.live_fps,
        "rows": [asdict(r) for r in rows],
        "distinct_vs_shared_fps_ratio_per_round": ratios,
        "distinct_vs_shared_fps_ratio": float(np.median(ratios)),
        "live_p99_ms": {k: float(np.median([r.e2e_p99_ms for r in pick(k, "live")])) for k in rss},
        "saturated_cpu_ms_per_frame": cpu,
        "service_rss_mb": rss,
        "rss_mb_per_extra_model": (rss["distinct"] - rss["shared"]) / (args.cameras - 1),
        "growth": growth,
        "targets": {"distinct_vs_shared_fps_ratio": 0.8},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)  # kept when a run fails


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# A fleet on this CPU: {report['cameras']} cameras, a model each against one shared "
        "(embedded broker, ONNX Runtime fp32)",
        "",
        f"`{report['command']}` ({report['date']})",
        "",
        "| scenario | round | mode | cameras | models | sent | scored | dropped | frames/s | mean batch "
        "| e2e p50 ms | e2e p99 ms | CPU ms/frame | service RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['round']} | {r['mode']} | {r['cameras']} | {r['models']} "
            f"| {r['frames_sent']} | {r['frames_scored']} | {r['frames_dropped']} "
            f"| {r['processed_fps']:.1f} | {r['mean_batch']:.1f} | {r['e2e_p50_ms']:.0f} "
            f"| {r['e2e_p99_ms']:.0f} | {r['cpu_ms_per_frame']:.1f} | {r['service_rss_mb']:.0f} |"
        )
    ratios = ", ".join(f"{v:.2f}" for v in report["distinct_vs_shared_fps_ratio_per_round"])
    rss, cpu = report["service_rss_mb"], report["saturated_cpu_ms_per_frame"]
    p99 = report["live_p99_ms"]
    lines += [
        "",
        f"Saturated aggregate frames/s, distinct / shared, median of rounds: "
        f"**{report['distinct_vs_shared_fps_ratio']:.2f}** (target "
        f"{report['targets']['distinct_vs_shared_fps_ratio']}); per round: {ratios}. The service's CPU "
        f"time per frame scored (saturated, median): shared {cpu['shared']:.1f} ms, distinct "
        f"{cpu['distinct']:.1f} ms.",
        f"Live ({report['live_fps_per_camera']:g} frames/s per camera), capture-to-publish p99, "
        "median of rounds: "
        f"shared {p99['shared']:.0f} ms, distinct {p99['distinct']:.0f} ms.",
        f"Service resident memory with its models loaded: shared {rss['shared']:.0f} MB, distinct "
        f"{rss['distinct']:.0f} MB: {report['rss_mb_per_extra_model']:.1f} MB per extra model.",
        "",
        "Growth (one process opening distinct models one after another):",
        "",
        "| models | load s (this one) | RSS growth MB |",
        "|---|---|---|",
    ]
    for step in report["growth"]:
        if step["models"] in (1, 2, 4, 8, 16, 32) or step is report["growth"][-1]:
            lines.append(f"| {step['models']} | {step['load_s']:.2f} | {step['rss_growth_mb']:.0f} |")
    machine = report["machine"]
    before, after = (
        "/".join(f"{v:.1f}" for v in machine[f"load_average_1_5_15_{when}"]) for when in ("before", "after")
    )
    lines += [
        "",
        f"Load average (1/5/15 min) before: {before}, after: {after} on {machine['cores']} cores "
        "shared with other jobs.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
