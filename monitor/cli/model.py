"""`anomon train`, `calibrate`, `refit`, `eval`, `export`, `bench`: a model from footage to a timed artifact.

Each command imports what it runs inside its body, so that `anomon --help` loads no torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

app = typer.Typer()
PANEL = "Model"

# model.runtime.BACKENDS, spelled out so that the choices need no import (a test keeps them equal).
Backend = Literal["auto", "torch", "onnxruntime", "tensorrt"]
RuntimeBackend = Annotated[
    Backend,
    typer.Option(
        help="auto: TensorRT with a GPU, else ONNX Runtime, else PyTorch", rich_help_panel="Runtime"
    ),
]
RuntimeDevice = Annotated[
    str | None,
    typer.Option(help="cpu or cuda[:N] (default: a GPU when present)", rich_help_panel="Runtime"),
]
RuntimeThreads = Annotated[
    int | None, typer.Option(help="CPU threads (default: the backend's choice)", rich_help_panel="Runtime")
]
# Several values after one flag (--batch-sizes 1 8 32), or the flag repeated.
BatchSizes = Annotated[list[int], typer.Option(metavar="N ...", help="batch sizes to time")]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as a dict of dotted keys to YAML values."""
    import yaml

    from model.config import ConfigError

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
        overrides[key] = yaml.safe_load(value)
    return overrides


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


@app.command(rich_help_panel=PANEL)
def train(
    data: Annotated[Path, typer.Option(help="normal footage: Ped2 root, frame folders or video files")],
    out: Annotated[Path, typer.Option(help="checkpoint file to write (.safetensors)")],
    config: Annotated[
        Path | None, typer.Option(help="YAML config with input/model/train sections (defaults otherwise)")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override, e.g. train.epochs=2")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="model version (default: data folder name and today's date)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run from --out")] = False,
    anomalies: Annotated[
        Path | None,
        typer.Option(help="labelled anomalous frames for the unbalanced setting (score: classifier)"),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device to train on, e.g. cuda")] = "cpu",
) -> int:
    """Train a model on normal footage."""
    from model.config import load_config
    from model.pipeline import train as train_model

    cfg = load_config(config, parse_overrides(overrides or []))
    meta = train_model(data, out, cfg, version=version, resume=resume, anomalies=anomalies, device=device)
    assert meta.calibration is not None
    print(
        f"wrote {out}: {meta.name} {meta.version}, trained in {meta.training['wall_seconds']:.0f} s, "
        f"threshold {meta.calibration.threshold:.4f} at {meta.calibration.false_alarm_rate:.1%} false alarms"
    )
    return 0


@app.command(rich_help_panel=PANEL)
def calibrate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint to calibrate")],
    data: Annotated[Path, typer.Option(help="held-out normal footage")],
    false_alarm_rate: Annotated[float, typer.Option(help="fraction of normal frames above threshold")] = 0.01,
    out: Annotated[
        Path | None, typer.Option(help="write here instead of updating --checkpoint in place")
    ] = None,
) -> int:
    """Set the threshold at a false-alarm rate on normal frames."""
    from model.pipeline import recalibrate

    cal = recalibrate(checkpoint, data, false_alarm_rate, out=out)
    print(
        f"calibrated on {cal.frames} normal frames: threshold {cal.threshold:.4f} "
        f"at {cal.false_alarm_rate:.2%} false alarms; wrote {out or checkpoint}"
    )
    return 0


@app.command(rich_help_panel=PANEL)
def refit(
    checkpoint: Annotated[Path, typer.Option(help="a finished AnoMem checkpoint")],
    data: Annotated[Path, typer.Option(help="the normal footage it was trained on")],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="a score setting, e.g. model.topk=4 (model.topk, object_window, score_weights)",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="write here instead of updating --checkpoint in place")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="the refitted model's version (default: the checkpoint's + '-refit')")
    ] = None,
) -> int:
    """Refit an AnoMem checkpoint's one-class score under changed score settings, same network."""
    from model.pipeline import refit_score

    meta = refit_score(checkpoint, data, parse_overrides(overrides or []), out=out, version=version)
    assert meta.calibration is not None
    print(
        f"wrote {out or checkpoint}: {meta.name} {meta.version}, same network, score refitted; "
        f"threshold {meta.calibration.threshold:.4f} at {meta.calibration.false_alarm_rate:.1%} false alarms"
    )
    return 0


@app.command("eval", rich_help_panel=PANEL)
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint file or exported artifact folder")],
    data: Annotated[Path, typer.Option(help="Ped2 root (its test split) or labelled clips")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the results to this JSON file")
    ] = None,
    smoothing: Annotated[
        int | None,
        typer.Option(
            help="frames in the causal mean of calibrated scores, as in the monitor "
            "(default: the checkpoint's)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="frames per inference batch")] = 32,
    threads: RuntimeThreads = None,
    backend: RuntimeBackend = "auto",
    device: RuntimeDevice = None,
) -> int:
    """AUROCs (MODELS.md protocol) and scoring speed on labelled clips."""
    import torch

    from model.evaluation import evaluate_path
    from model.runtime import open_runtime

    if threads:
        torch.set_num_threads(threads)
    runtime = open_runtime(checkpoint, backend, device=device, threads=threads)
    print(f"scoring with {runtime.describe()}", file=sys.stderr)
    served = runtime.model
    result = evaluate_path(
        runtime,
        served.config,
        data,
        smoothing or served.config.train.smoothing_frames,
        calibration=served.calibration,
        batch_size=batch_size,
    )
    result = {
        "model": served.name,
        "version": served.version,
        "checkpoint": str(checkpoint),
        "backend": runtime.backend,
        "precision": served.precision,
        **result,
    }
    print(json.dumps(result, indent=2))
    if json_out:
        write_json(json_out, result)
    return 0


@app.command(rich_help_panel=PANEL)
def export(
    checkpoint: Annotated[Path, typer.Option(help="a finished checkpoint")],
    out: Annotated[Path, typer.Option(help="output folder")],
    precision: Annotated[Literal["fp32", "fp16", "int8"], typer.Option(help="graph precision")] = "fp32",
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="normal footage to calibrate INT8 on (required for int8)", rich_help_panel="INT8"),
    ] = None,
    calibration_frames: Annotated[
        int, typer.Option(help="INT8 calibration frames", rich_help_panel="INT8")
    ] = 256,
    int8_target: Annotated[
        Literal["cpu", "tensorrt"],
        typer.Option(
            help="cpu: ONNX Runtime's fast uint8-activation form; tensorrt: symmetric INT8 Q/DQ",
            rich_help_panel="INT8",
        ),
    ] = "cpu",
) -> int:
    """Write model.onnx + model.json for the runtimes."""
    from model.export import export_artifact

    meta = export_artifact(
        checkpoint,
        out,
        precision,
        calibration_data=calibration_data,
        calibration_frames=calibration_frames,
        int8_target=int8_target,
    )
    print(
        f"wrote {out}/model.onnx ({meta.precision}, sha256 {meta.onnx_sha256[:12]}) and model.json: "
        f"{meta.name} {meta.version}, input uint8 {list(meta.input_shape)}, map {list(meta.map_shape)}"
    )
    return 0


@app.command(rich_help_panel=PANEL)
def bench(
    artifact: Annotated[Path, typer.Option(help="exported folder or checkpoint file")],
    batch_sizes: BatchSizes = [1, 8, 32],  # noqa: B006 (typer passes a copy)
    calls: Annotated[int, typer.Option(help="timed calls per batch size")] = 30,
    warmup: Annotated[int, typer.Option(help="untimed calls first")] = 3,
    threads: RuntimeThreads = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the rows to this JSON file")
    ] = None,
    backend: RuntimeBackend = "auto",
    device: RuntimeDevice = None,
) -> int:
    """Model-only frames/s and p50/p99 latency of a backend."""
    from dataclasses import asdict

    from tqdm import tqdm

    from model.runtime import open_runtime
    from model.runtime.bench import measure

    runtime = open_runtime(artifact, backend, device=device, threads=threads)
    print(f"benchmarking {runtime.describe()}", file=sys.stderr)
    rows = []
    for batch in tqdm(batch_sizes, desc="batch sizes", unit="size"):
        stats = measure(runtime, batch, calls=calls, warmup=warmup)
        rows.append({"backend": runtime.backend, "precision": runtime.model.precision, **asdict(stats)})
        tqdm.write(
            f"batch {batch:3d}: {stats.fps:8.1f} frames/s, "
            f"p50 {stats.p50_ms:7.2f} ms, p99 {stats.p99_ms:7.2f} ms"
        )
    if json_out:
        write_json(json_out, {"device": runtime.device, "rows": rows})
    return 0
