"""The `anomon` command line: one entry point, one subcommand per job.

Errors a user can cause end as one line on stderr and exit code 2; nothing prints a traceback
unless ANOMON_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from model.checkpoint import CheckpointError
from model.config import ConfigError
from model.data import DataError
from model.runtime.base import BackendUnavailableError
from monitor.broker import BrokerError
from monitor.ingest import PublishError
from monitor.kafka_client import KafkaUnavailableError

USER_ERRORS = (
    ConfigError,
    CheckpointError,
    DataError,
    BackendUnavailableError,
    FileNotFoundError,
    ValueError,
    BrokerError,
    KafkaUnavailableError,
    PublishError,
)


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
        overrides[key] = yaml.safe_load(value)
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from model.config import load_config
    from model.pipeline import train

    cfg = load_config(args.config, _parse_overrides(args.set))
    meta = train(
        args.data,
        args.out,
        cfg,
        version=args.version,
        resume=args.resume,
        anomalies=args.anomalies,
        device=args.device,
    )
    assert meta.calibration is not None
    print(
        f"wrote {args.out}: {meta.name} {meta.version}, trained in {meta.training['wall_seconds']:.0f} s, "
        f"threshold {meta.calibration.threshold:.4f} at {meta.calibration.false_alarm_rate:.1%} false alarms"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from model.pipeline import recalibrate

    cal = recalibrate(args.checkpoint, args.data, args.false_alarm_rate, out=args.out)
    print(
        f"calibrated on {cal.frames} normal frames: threshold {cal.threshold:.4f} "
        f"at {cal.false_alarm_rate:.2%} false alarms; wrote {args.out or args.checkpoint}"
    )
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    from model.pipeline import refit_score

    overrides = _parse_overrides(args.set)
    meta = refit_score(args.checkpoint, args.data, overrides, out=args.out, version=args.version)
    assert meta.calibration is not None
    print(
        f"wrote {args.out or args.checkpoint}: {meta.name} {meta.version}, same network, score refitted; "
        f"threshold {meta.calibration.threshold:.4f} at {meta.calibration.false_alarm_rate:.1%} false alarms"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from model.evaluation import evaluate_path
    from model.runtime import open_runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = open_runtime(args.checkpoint, args.backend, device=args.device, threads=args.threads)
    print(f"scoring with {runtime.describe()}", file=sys.stderr)
    served = runtime.model
    smoothing = args.smoothing or served.config.train.smoothing_frames
    result = evaluate_path(
        runtime,
        served.config,
        args.data,
        smoothing,
        calibration=served.calibration,
        batch_size=args.batch_size,
    )
    result = {
        "model": served.name,
        "version": served.version,
        "checkpoint": str(args.checkpoint),
        "backend": runtime.backend,
        "precision": served.precision,
        **result,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _runtime_args(p: argparse.ArgumentParser) -> None:
    from model.runtime import BACKENDS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: TensorRT with a GPU, else ONNX Runtime, else PyTorch",
    )
    p.add_argument("--device", help="cpu or cuda[:N] (default: a GPU when present)")


def cmd_export(args: argparse.Namespace) -> int:
    from model.export import export_artifact

    meta = export_artifact(
        args.checkpoint,
        args.out,
        args.precision,
        calibration_data=args.calibration_data,
        calibration_frames=args.calibration_frames,
        int8_target=args.int8_target,
    )
    print(
        f"wrote {args.out}/model.onnx ({meta.precision}, sha256 {meta.onnx_sha256[:12]}) and model.json: "
        f"{meta.name} {meta.version}, input uint8 {list(meta.input_shape)}, map {list(meta.map_shape)}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from model.runtime import open_runtime
    from model.runtime.bench import measure

    runtime = open_runtime(args.artifact, args.backend, device=args.device, threads=args.threads)
    print(f"benchmarking {runtime.describe()}", file=sys.stderr)
    rows = []
    for batch in tqdm(args.batch_sizes, desc="batch sizes", unit="size"):
        stats = measure(runtime, batch, calls=args.calls, warmup=args.warmup)
        rows.append({"backend": runtime.backend, "precision": runtime.model.precision, **asdict(stats)})
        tqdm.write(
            f"batch {batch:3d}: {stats.fps:8.1f} frames/s, "
            f"p50 {stats.p50_ms:7.2f} ms, p99 {stats.p99_ms:7.2f} ms"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": runtime.device, "rows": rows}, indent=2) + "\n")
    return 0


def _frame_publisher(args: argparse.Namespace) -> Any:
    from monitor.ingest import FramePublisher
    from monitor.kafka_client import load_kafka_settings, make_producer

    settings = load_kafka_settings(args.kafka_config, bootstrap_servers=args.bootstrap)
    return FramePublisher(make_producer(settings), args.topic)


def cmd_ingest(args: argparse.Namespace) -> int:
    from monitor.ingest import ingest, open_source, parse_size

    resize = parse_size(args.resize) if args.resize else None
    source = open_source(args.source)
    publisher = _frame_publisher(args)
    try:
        report = ingest(
            source,
            publisher,
            args.camera,
            fps=args.fps,
            resize=resize,
            jpeg_quality=args.jpeg_quality,
            loop=args.loop,
            max_frames=args.max_frames,
            start_index=args.start_index,
        )
    finally:
        publisher.producer.close(timeout=10)
    dropped = f"; {report.dropped} live frames dropped to keep the rate" if report.dropped else ""
    print(
        f"sent {report.frames} frames of camera {report.camera_id} to {report.topic} "
        f"in {report.seconds:.1f} s ({report.frames / max(report.seconds, 1e-9):.1f} fps){dropped}"
        + (" (interrupted)" if report.interrupted else "")
    )
    return 130 if report.interrupted else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import find_clips, replay

    clips = find_clips(args.data, args.clips)
    publisher = _frame_publisher(args)
    try:
        report = replay(
            clips,
            publisher,
            fps=args.fps,
            cameras=args.cameras,
            camera_prefix=args.camera_prefix,
            start_index=args.start_index,
            clip_gap_seconds=args.clip_gap,
        )
    finally:
        publisher.producer.close(timeout=10)
    if args.manifest:
        report.write_manifest(args.manifest)
    print(
        f"sent {len(report.sent)} frames of {len(clips)} clips as {len(report.cameras)} camera(s) "
        f"({report.cameras[0]}..{report.cameras[-1]}) to {report.topic} in {report.seconds:.1f} s"
        + (" (interrupted)" if report.interrupted else "")
        + (f"; manifest: {args.manifest}" if args.manifest else "")
    )
    return 130 if report.interrupted else 0


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    from monitor.wire import FRAMES_TOPIC

    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers, comma-separated "
        "(default: --kafka-config's, else env ANOMON_BOOTSTRAP, else 127.0.0.1:9092)",
    )
    p.add_argument(
        "--kafka-config",
        metavar="YAML",
        help="Kafka connection settings (TLS, SASL; the file's kafka: section or its top level)",
    )
    p.add_argument("--topic", default=FRAMES_TOPIC, help="frames topic")
    p.add_argument("--start-index", type=int, default=0, help="frame index of the first frame")


def _service_config(args: argparse.Namespace) -> Any:
    from monitor.config import load_service_config

    flags = {
        "model.artifact": getattr(args, "artifact", None),
        "model.backend": getattr(args, "backend", None),
        "model.device": getattr(args, "device", None),
        "model.threads": getattr(args, "threads", None),
        "model.workers": getattr(args, "workers", None),
        "kafka.bootstrap_servers": getattr(args, "bootstrap", None),
        "consumer.group_id": getattr(args, "group_id", None),
        "intake.mode": getattr(args, "mode", None),
        "batching.max_batch": getattr(args, "max_batch", None),
        "batching.max_wait_ms": getattr(args, "max_wait_ms", None),
        "http.host": getattr(args, "http_host", None),
        "http.port": getattr(args, "http_port", None),
    }
    return load_service_config(args.config, {k: v for k, v in flags.items() if v is not None})


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _service_config(args)
    from monitor.service import serve

    stats = serve(cfg, max_idle_seconds=args.exit_when_idle)
    print(
        f"anomon run: stopped after {stats.processed} frames scored, {stats.dead_letters} dead letters, "
        f"{stats.dropped} dropped, {stats.alerts} alerts"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    result = run_demo(frames=args.frames, fps=args.fps, http_port=args.http_port, workdir=args.workdir)
    return 0 if result.scores == result.frames_sent else 1


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="anomon", description="Streaming video anomaly monitor (AnoMem / DAAD).", formatter_class=fmt
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on normal footage", formatter_class=fmt)
    p.add_argument("--data", required=True, help="normal footage: Ped2 root, frame folders or video files")
    p.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--config", help="YAML config with input/model/train sections (defaults otherwise)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=2"
    )
    p.add_argument("--version", help="model version (default: data folder name and today's date)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    p.add_argument(
        "--anomalies", help="labelled anomalous frames for the unbalanced setting (score: classifier)"
    )
    p.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "calibrate", help="set the threshold at a false-alarm rate on normal frames", formatter_class=fmt
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint to calibrate")
    p.add_argument("--data", required=True, help="held-out normal footage")
    p.add_argument(
        "--false-alarm-rate", type=float, default=0.01, help="fraction of normal frames above threshold"
    )
    p.add_argument("--out", help="write here instead of updating --checkpoint in place")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "refit",
        help="refit an AnoMem checkpoint's one-class score under changed score settings, same network",
        formatter_class=fmt,
    )
    p.add_argument("--checkpoint", required=True, help="a finished AnoMem checkpoint")
    p.add_argument("--data", required=True, help="the normal footage it was trained on")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a score setting, e.g. model.motion_pooling=object (model.topk, topk_pooling, motion_topk, "
        "motion_pooling, object_window, score_weights, standardize_terms)",
    )
    p.add_argument("--out", help="write here instead of updating --checkpoint in place")
    p.add_argument("--version", help="the refitted model's version (default: the checkpoint's + '-refit')")
    p.set_defaults(func=cmd_refit)

    p = sub.add_parser(
        "eval", help="AUROCs (MODELS.md protocol) and scoring speed on labelled clips", formatter_class=fmt
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or exported artifact folder")
    p.add_argument("--data", required=True, help="Ped2 root (its test split) or labelled clips")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument(
        "--smoothing",
        type=int,
        help="frames in the causal mean of calibrated scores, as in the monitor (default: the checkpoint's)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="frames per inference batch")
    p.add_argument("--threads", type=int, help="CPU threads (default: the backend's choice)")
    _runtime_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write model.onnx + model.json for the runtimes", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="a finished checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="graph precision")
    p.add_argument("--calibration-data", help="normal footage to calibrate INT8 on (required for int8)")
    p.add_argument("--calibration-frames", type=int, default=256, help="INT8 calibration frames")
    p.add_argument(
        "--int8-target",
        choices=("cpu", "tensorrt"),
        default="cpu",
        help="cpu: ONNX Runtime's fast uint8-activation form; tensorrt: symmetric INT8 Q/DQ",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bench", help="model-only frames/s and p50/p99 latency of a backend", formatter_class=fmt
    )
    p.add_argument("--artifact", required=True, help="exported folder or checkpoint file")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="batch sizes to time")
    p.add_argument("--calls", type=int, default=30, help="timed calls per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--threads", type=int, help="CPU threads (default: the backend's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    _runtime_args(p)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser(
        "ingest",
        help="publish a camera's frames (file, folder, stream, device) to Kafka",
        formatter_class=fmt,
    )
    p.add_argument(
        "--source", required=True, help="video file, image folder, rtsp:// or http:// URL, or device index"
    )
    p.add_argument("--camera", required=True, help="camera id, the record key: 1-128 chars of [A-Za-z0-9._-]")
    _add_output_arguments(p)
    p.add_argument(
        "--fps",
        type=float,
        help="frames per second (default: the source's rate; 10 for an image folder); "
        "live sources drop frames above it",
    )
    p.add_argument("--resize", metavar="WxH", help="resize frames before encoding, e.g. 640x360")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality, 1 to 100")
    p.add_argument("--loop", action="store_true", help="start again at the end (a stream: reconnect)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "replay",
        help="replay a dataset into Kafka at a live rate, as one or more cameras",
        formatter_class=fmt,
    )
    p.add_argument(
        "--data", required=True, help="Ped2 root (its test/ clips), a folder of frame folders or videos"
    )
    _add_output_arguments(p)
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    p.add_argument("--cameras", type=int, default=1, help="cameras replaying the same clips concurrently")
    p.add_argument("--camera-prefix", default="replay", help="camera ids are PREFIX-1 ... PREFIX-N")
    p.add_argument("--clips", nargs="+", metavar="CLIP", help="replay only these clips, in this order")
    p.add_argument(
        "--clip-gap",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="pause before each clip after the first, so that a motion model does not read the cut "
        "between clips as motion (above the service's intake.motion_max_gap_seconds, 0.5); 0: none",
    )
    p.add_argument(
        "--manifest",
        metavar="JSON",
        help="write what was sent: [{camera_id, frame_index, clip, clip_frame}, ...]",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "run", help="the service: score frames from Kafka, publish scores and alerts", formatter_class=fmt
    )
    p.add_argument(
        "--config", help="service YAML (kafka, consumer, topics, model, batching, intake, cameras, http)"
    )
    p.add_argument("--artifact", help="exported model folder or checkpoint (model.artifact)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), help="model.backend")
    p.add_argument("--device", help="model.device: cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="model.threads (per worker)")
    p.add_argument("--workers", help="model.workers: auto (2 on a CPU, 1 on a GPU) or a number")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="kafka.bootstrap_servers")
    p.add_argument("--group-id", help="consumer.group_id (instances with one id share the cameras)")
    p.add_argument("--mode", choices=("live", "replay"), help="intake.mode: live drops stale frames")
    p.add_argument("--max-batch", type=int, help="batching.max_batch")
    p.add_argument("--max-wait-ms", type=float, help="batching.max_wait_ms")
    p.add_argument("--http-host", help="http.host (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="http.port (default 9108; 0 = any free port)")
    p.add_argument(
        "--exit-when-idle", type=float, metavar="SECONDS", help="stop after this long without frames"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="one-command first run: embedded broker, a model trained on a generated scene, live scores",
        formatter_class=fmt,
    )
    p.add_argument("--frames", type=int, default=120, help="frames in the replayed test clip")
    p.add_argument("--fps", type=float, default=15.0, help="replay rate")
    p.add_argument("--http-port", type=int, default=9108, help="metrics port (0 = any free port)")
    p.add_argument("--workdir", help="where the scene, model and export go (default: a temp folder)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as err:
        if os.environ.get("ANOMON_DEBUG") == "1":
            raise
        print(f"anomon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"anomon {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
