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

USER_ERRORS = (
    ConfigError,
    CheckpointError,
    DataError,
    BackendUnavailableError,
    FileNotFoundError,
    ValueError,
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
    result = evaluate_path(runtime, served.config, args.data, smoothing, batch_size=args.batch_size)
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
        "eval", help="AUROCs (MODELS.md protocol) and scoring speed on labelled clips", formatter_class=fmt
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or exported artifact folder")
    p.add_argument("--data", required=True, help="Ped2 root (its test split) or labelled clips")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument(
        "--smoothing", type=int, help="causal smoothing window in frames (default: the checkpoint's)"
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
