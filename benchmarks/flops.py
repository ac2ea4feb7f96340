r"""FLOPs per frame: what each model config costs, how fast each runtime runs it, and how much of this
CPU's matrix-multiply roof that speed is.

For each config (built untrained: weights do not change the work), GFLOP/frame is counted on the
PyTorch forward of one uint8 frame pair (torch.utils.flop_counter: convolutions and matrix products;
elementwise work is not counted). Every ONNX export computes the same graph, so one count per config.
The roof is the median GFLOP/s of a float32 torch.mm of N x N matrices at the run's thread count.

Timing is interleaved: each round times every (config, runtime, batch) for at least --min-seconds (at
least one call) and the roof once, so load drift on a shared machine hits all of them alike; frames/s
and the roof are medians over the rounds; share of roof = GFLOP/frame x frames/s / roof, round by
round against that round's roof, then the median (the shared machine's speed drifts within a run).

`--accuracy NAME=PATH` takes a result JSON of benchmarks/scenes.py run with AnoMem config NAME
(`default` or `large-fleet candidate`; the JSON's overrides must be that config's) and puts its
causal micro AUROC per scene and the loss against the default beside the speeds, with the verdict on
the large-fleet bar: at most half the default's FLOPs and at most 0.01 causal micro AUROC lost on
each of Ped2 and Ped1-dev.

    python benchmarks/scenes.py --threads 1 --models anomem --out runs/default_scenes
    python benchmarks/scenes.py --threads 1 --models anomem --set input.height=112 \
        --set input.width=168 --set model.flow_window=11 \
        --set 'model.memories=[{slots: 128}, {slots: 256}, {slots: 512}]' --out runs/candidate_scenes
    python benchmarks/flops.py --threads 1 --accuracy default=runs/default_scenes.json \
        "large-fleet candidate=runs/candidate_scenes.json"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from results_io import RESULTS, environment, write_results
from runtimes import exported, parse_runtime
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from model.calibration import Calibration
from model.checkpoint import CheckpointMeta, save_checkpoint
from model.config import ConfigError, ExperimentConfig, load_config
from model.pipeline import build_model
from model.runtime import open_runtime
from model.runtime.base import Runtime
from model.runtime.bench import sample_frames, time_calls

CANDIDATE_OVERRIDES: dict[str, Any] = {
    "input.height": 112,
    "input.width": 168,
    "model.flow_window": 11,
    "model.memories": [{"slots": 128}, {"slots": 256}, {"slots": 512}],
}
CONFIGS: dict[str, dict[str, Any]] = {
    "anomem default": {},
    "daad default": {"model.name": "daad"},
    "anomem large-fleet candidate": CANDIDATE_OVERRIDES,
}
REFERENCE = "anomem default"
CANDIDATE = "anomem large-fleet candidate"
# The large-fleet bar (issue 29): at most this share of the default's FLOPs, at most this AUROC loss
# on each of these scenes.
BAR_FLOPS_RATIO = 0.5
BAR_AUROC_LOSS = 0.01
BAR_SCENES = ("ped2", "ped1-dev")
DEFAULT_RUNTIMES = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8")


def gflop_per_frame(cfg: ExperimentConfig, batch: int = 1) -> float:
    """GFLOP per frame of the config's PyTorch forward on `batch` uint8 frame pairs (untrained)."""
    model = build_model(cfg, load_pretrained=False).eval()
    spec = cfg.input
    frames = torch.zeros((batch, spec.channels, spec.height, spec.width), dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(frames)
    return counter.get_total_flops() / batch / 1e9


def matmul_gflops(n: int, calls: int, seed: int = 0) -> list[float]:
    """GFLOP/s of each of `calls` float32 torch.mm of two n x n matrices (2 n^3 FLOPs a call)."""
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(n, n, generator=generator) for _ in range(2))
    torch.mm(a, b)  # warm-up: the first call allocates
    rates = []
    for _ in range(calls):
        started = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - started) / 1e9)
    return rates


def share_of_roof(gflop_per_frame: float, fps: float, roof_gflops: float) -> float:
    """The share of the roof a runtime's speed amounts to: GFLOP/frame x frames/s / roof GFLOP/s."""
    return gflop_per_frame * fps / roof_gflops


def untrained_checkpoint(cfg: ExperimentConfig, path: Path) -> Path:
    """A complete checkpoint of the config's untrained network (a unit calibration): what the runtimes
    and the export need to time it."""
    model = build_model(cfg, load_pretrained=False).eval()
    unit = Calibration(threshold=0.0, scale=1.0, false_alarm_rate=0.01, normal_median=-1.0, frames=0)
    meta = CheckpointMeta(
        name=cfg.model.name,
        version="untrained",
        config=cfg,
        calibration=unit,
        map_calibration=unit,
        complete=True,
    )
    save_checkpoint(path, model.state_dict(), meta)
    return path


def timed_fps(runtime: Runtime, frames: np.ndarray, min_seconds: float) -> float:
    """Frames/s of back-to-back calls on one batch for at least `min_seconds` (at least one call)."""
    seconds: list[float] = []
    while not seconds or sum(seconds) < min_seconds:
        seconds += time_calls(runtime, frames, 1)
    return len(frames) * len(seconds) / sum(seconds)


# ------------------------------------------------------------------------------------- accuracy
def parse_source(spec: str) -> tuple[str, Path]:
    """`NAME=PATH` as (config label, path); NAME is an AnoMem config (`default`, ...).

    Raises:
        ValueError: no `=`, or a NAME that is no AnoMem config here.
    """
    name, sep, path = spec.partition("=")
    label = f"anomem {name.strip()}"
    names = [c.removeprefix("anomem ") for c in CONFIGS if c.startswith("anomem ")]
    if not sep or label not in CONFIGS:
        raise ValueError(f"--accuracy {spec!r}: expected NAME=PATH with NAME one of {', '.join(names)}")
    return label, Path(path)


def load_source(label: str, path: Path) -> dict[str, Any]:
    """A scenes.py result of config `label`: its command, date, file digest and AnoMem causal micro
    AUROC per scene.

    Raises:
        ValueError: the file is missing or no scenes.py result, or it was run with another config.
    """
    try:
        data = json.loads(path.read_text())
        command, date, overrides, rows = data["command"], data["date"], data["overrides"], data["results"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--accuracy {path}: not a readable benchmarks/scenes.py result ({err})") from None
    if not same_config(overrides, CONFIGS[label]):
        raise ValueError(
            f"--accuracy {path}: run with overrides {overrides}, which are not {label}'s {CONFIGS[label]}"
        )
    auroc = {
        r["scene"]: float(r["auroc_causal_micro"])
        for r in rows
        if r["model"] == "anomem" and "footage_frames" not in r
    }
    return {
        "config": label,
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "command": command,
        "date": date,
        "auroc_causal_micro": auroc,
    }


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two override sets give the same AnoMem config."""
    try:
        return load_config(None, a).model_dump() == load_config(None, b).model_dump()
    except ConfigError:
        return False


def accuracy_rows(sources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per source and scene: its causal micro AUROC and the loss against the reference
    config's on that scene (reference minus it; None without a reference row for the scene)."""
    reference = next((s["auroc_causal_micro"] for s in sources if s["config"] == REFERENCE), {})
    rows = []
    for source in sources:
        for scene, auroc in source["auroc_causal_micro"].items():
            loss = reference[scene] - auroc if scene in reference else None
            rows.append(
                {"config": source["config"], "scene": scene, "auroc_causal_micro": auroc, "loss": loss}
            )
    return rows


def verdict(gflops: dict[str, float], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The candidate against the bar: its FLOPs over the reference's, and its loss on each bar scene.
    `met` is True or False, or None while a bar scene has no loss and nothing else fails."""
    ratio = gflops[CANDIDATE] / gflops[REFERENCE]
    losses = {
        scene: next((r["loss"] for r in rows if r["config"] == CANDIDATE and r["scene"] == scene), None)
        for scene in BAR_SCENES
    }
    checks = [ratio <= BAR_FLOPS_RATIO] + [
        None if loss is None else loss <= BAR_AUROC_LOSS for loss in losses.values()
    ]
    met = False if False in checks else (None if None in checks else True)
    return {"flops_ratio": ratio, "losses": losses, "met": met}


def verdict_line(v: dict[str, Any]) -> str:
    """The verdict in words, with its numbers."""
    word = {True: "met", False: "not met", None: "undetermined"}[v["met"]]
    losses = ", ".join(
        f"{scene} {'no result' if loss is None else f'{loss:+.4f}'}" for scene, loss in v["losses"].items()
    )
    return (
        f"**Large-fleet bar {word}**: {CANDIDATE} costs {v['flops_ratio']:.3f}x the FLOPs of {REFERENCE} "
        f"(bar: at most {BAR_FLOPS_RATIO}x); causal micro AUROC loss {losses} (bar: at most "
        f"{BAR_AUROC_LOSS} on each of {', '.join(BAR_SCENES)})."
    )


# ------------------------------------------------------------------------------------- markdown
def markdown(report: dict[str, Any]) -> str:
    load = report["load_average_1min"]
    lines = [
        "# FLOPs per frame",
        "",
        f"Command: `{report['command']}` ({report['date']})  ",
        f"Machine: {report['machine']}, torch {report['torch']}, onnxruntime {report['onnxruntime']}, "
        f"{report['threads']} thread(s). Load average (1 min) {load['start']:.2f} at the start and "
        f"{load['end']:.2f} at the end on {os.cpu_count()} cores: "
        + (
            "the machine was shared with other jobs, so absolute speeds are low and noisy; "
            if max(load.values()) > report["threads"] + 0.5  # more runnable work than this run's threads
            else "no other load seen; "
        )
        + "every ratio and share below is from the same interleaved run.",
        "",
        f"GFLOP/frame: {report['protocol']['flops']}. Roof: {report['protocol']['roof']}: "
        f"**{report['roof_gflops']:.1f} GFLOP/s** (rounds: "
        + ", ".join(f"{r:.1f}" for r in report["roof_gflops_rounds"])
        + f"). Timing: {report['protocol']['timing']}.",
        "",
        "| config | runtime | precision | batch | GFLOP/frame | frames/s | share of roof |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['config']} | {r['runtime']} | {r['precision']} | {r['batch']} "
            f"| {r['gflop_per_frame']:.3f} | {r['fps']:.1f} | {100 * r['share_of_roof']:.1f}% |"
        )
    lines += ["", "INT8 rows are compared with the float32 roof too.", ""]
    if report["accuracy_sources"]:
        scenes = list(dict.fromkeys(r["scene"] for r in report["accuracy"]))
        lines += [
            "## Accuracy",
            "",
            "AnoMem causal micro AUROC per scene (benchmarks/scenes.py protocol) and the loss against "
            f"{REFERENCE} (its AUROC minus this one's):",
            "",
            "| config | " + " | ".join(scenes) + " | " + " | ".join(f"loss {s}" for s in scenes) + " |",
            "|---|" + "---|" * (2 * len(scenes)),
        ]
        for source in report["accuracy_sources"]:
            rows = {r["scene"]: r for r in report["accuracy"] if r["config"] == source["config"]}
            cells = [f"{rows[s]['auroc_causal_micro']:.4f}" if s in rows else "" for s in scenes]
            cells += [
                f"{rows[s]['loss']:+.4f}" if s in rows and rows[s]["loss"] is not None else "" for s in scenes
            ]
            lines.append(f"| {source['config']} | " + " | ".join(cells) + " |")
        lines += ["", "Sources:", ""]
        lines += [
            f"- {s['config']}: `{s['path']}` (sha256 {s['sha256'][:12]}), from `{s['command']}` ({s['date']})"
            for s in report["accuracy_sources"]
        ]
        if report["verdict"] is not None:
            lines += ["", verdict_line(report["verdict"])]
    if report["notes"]:
        lines += ["", "Notes:", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime CPU threads")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="timed seconds per configuration per round (>= 1 call)"
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=list(DEFAULT_RUNTIMES),
        metavar="BACKEND-PRECISION",
        help=f"what to time (default: {' '.join(DEFAULT_RUNTIMES)}); as benchmarks/runtimes.py",
    )
    parser.add_argument("--matmul-size", type=int, default=1024, help="the roof's matrices are N x N")
    parser.add_argument("--matmul-calls", type=int, default=5, help="torch.mm calls per round")
    parser.add_argument(
        "--data", default="../shared/data/ucsd_ped2", help="Ped2 root: INT8 calibration frames (train/)"
    )
    parser.add_argument(
        "--accuracy",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=PATH",
        help="a benchmarks/scenes.py result of AnoMem config NAME (default, large-fleet candidate)",
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the result's notes")
    parser.add_argument("--out", type=Path, default=RESULTS / "flops", help="output path without suffix")
    args = parser.parse_args(argv)
    try:
        specs = [parse_runtime(spec, "cpu") for spec in args.runtimes]
        sources = [load_source(*parse_source(spec)) for spec in args.accuracy]
    except ValueError as err:
        parser.error(str(err))
    if "int8" in {p for _, p in specs} and not Path(args.data, "train").is_dir():
        parser.error(f"--data {args.data}: no train/ folder (INT8 calibration frames); pass Ped2's root")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    configs = {label: load_config(None, overrides) for label, overrides in CONFIGS.items()}
    gflops = {label: gflop_per_frame(cfg) for label, cfg in tqdm(configs.items(), desc="counting FLOPs")}

    scratch = tempfile.TemporaryDirectory(prefix="anomon-flops-")  # removed when main returns
    work = Path(scratch.name)
    runtimes: dict[tuple[str, str, str], Runtime] = {}
    for i, (label, cfg) in enumerate(tqdm(configs.items(), desc="exporting and opening", unit="config")):
        ckpt = untrained_checkpoint(cfg, work / f"{i}.safetensors")
        for backend, precision in specs:
            if backend == "torch":
                runtimes[(label, backend, precision)] = open_runtime(
                    ckpt, "torch", device="cpu", threads=args.threads
                )
            else:
                folder = exported(str(ckpt), work / f"{i}-{precision}", precision, args.data, "cpu")
                runtimes[(label, backend, precision)] = open_runtime(
                    folder, backend, device="cpu", threads=args.threads
                )

    cases = [(key, batch) for key in runtimes for batch in args.batch_sizes]
    frames = {(key, b): sample_frames(runtimes[key], b) for key, b in cases}
    for key, batch in cases:  # warm-up
        time_calls(runtimes[key], frames[(key, batch)], 2)
    fps: dict[tuple[tuple[str, str, str], int], list[float]] = {c: [] for c in cases}
    roof_rounds: list[float] = []
    for _ in tqdm(range(args.rounds), desc="interleaved rounds", unit="round"):
        for key, batch in cases:
            fps[(key, batch)].append(timed_fps(runtimes[key], frames[(key, batch)], args.min_seconds))
        roof_rounds.append(statistics.median(matmul_gflops(args.matmul_size, args.matmul_calls)))
    roof = statistics.median(roof_rounds)

    rows = []
    for (label, backend, precision), batch in cases:
        median_fps = statistics.median(fps[((label, backend, precision), batch)])
        rows.append(
            {
                "config": label,
                "overrides": CONFIGS[label],
                "runtime": backend,
                "precision": precision,
                "batch": batch,
                "gflop_per_frame": gflops[label],
                "fps": median_fps,
                "fps_rounds": fps[((label, backend, precision), batch)],
                # Per round against that round's roof, then the median: the machine's speed drifts.
                "share_of_roof": statistics.median(
                    share_of_roof(gflops[label], f, r)
                    for f, r in zip(fps[((label, backend, precision), batch)], roof_rounds, strict=True)
                ),
            }
        )
    accuracy = accuracy_rows(sources)
    configs_with_accuracy = {s["config"] for s in sources}
    report_verdict = verdict(gflops, accuracy) if {REFERENCE, CANDIDATE} <= configs_with_accuracy else None
    env = environment()
    report = {
        **env,
        "onnxruntime": onnxruntime.__version__,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "protocol": {
            "flops": "torch.utils.flop_counter.FlopCounterMode on the untrained PyTorch forward of one "
            "uint8 frame pair (convolutions and matrix products; elementwise work not counted); one "
            "count per config, as every runtime computes the same graph",
            "roof": f"float32 torch.mm of {args.matmul_size} x {args.matmul_size} matrices, median of "
            f"{args.matmul_calls} calls per round, median over the rounds, {args.threads} thread(s)",
            "timing": f"{args.rounds} interleaved rounds, each timing every (config, runtime, batch) for "
            f"at least {args.min_seconds:g} s (at least one call) and the roof once; frames/s = the "
            "median over the rounds of frames / seconds of back-to-back calls on one random uint8 batch; "
            "share of roof = the median over the rounds of GFLOP/frame x frames/s / that round's roof",
        },
        "gflop_per_frame": gflops,
        "roof_gflops": roof,
        "roof_gflops_rounds": roof_rounds,
        "accuracy_sources": sources,
        "accuracy": accuracy,
        "verdict": report_verdict,
        "notes": args.note,
        "results": rows,
    }
    if any(p == "int8" for _, p in specs):
        report["protocol"]["int8"] = f"the INT8 exports are calibrated on {args.data}/train frames"
    extra = {k: v for k, v in report.items() if k not in env and k != "results"}
    write_results(args.out, env, rows, markdown(report), **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
