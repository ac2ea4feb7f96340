"""The GPU check's pieces, merged: `benchmarks/gpu_check.sh` runs the measurements, this writes the result.

    python benchmarks/gpu_check.py probe --out WORK/environment.json
    python benchmarks/gpu_check.py collect --environment WORK/environment.json \\
        --runtimes WORK/runtimes.json --e2e WORK/e2e.json --out benchmarks/results/gpu_check.json

`probe` records the machine: GPU, driver, CUDA, torch, ONNX Runtime and its providers, and TensorRT's
version or why it cannot be imported. `collect` takes the model-only run (benchmarks/runtimes.py: frames/s
per backend, precision and batch, Ped2 AUROC of each), the end-to-end run (benchmarks/service_ceiling.py
with a real model: frames/s at 1 to 64 cameras) and, when measured, the service's ceiling on the same
machine (the instant model), checks AUROC parity of every GPU runtime against ONNX Runtime, and writes
OUT.json and OUT.md. It exits 1 when a parity check fails (the result is written all the same).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from results_io import ANOMEM_ARTIFACT, RESULTS, run_record

# Largest |AUROC difference| from ONNX Runtime's on the same frames that still counts as parity:
# FP16 and INT8 each against ONNX Runtime running the same graph; PyTorch (autocast FP16 or FP32)
# against ONNX Runtime at the same precision.
TOLERANCE = {"fp32": 0.002, "fp16": 0.005, "int8": 0.01}
AUROCS = ("auroc_causal_micro", "pixel_auroc")


def _version(module: str) -> tuple[str | None, str | None]:
    """(version, None) when `module` imports, else (None, why not)."""
    try:
        return str(importlib.import_module(module).__version__), None
    except Exception as err:  # an import can fail in many ways (missing libraries, CUDA mismatch)
        return None, f"{type(err).__name__}: {err}"


def probe() -> dict[str, Any]:
    """What this machine offers the check."""
    import torch

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    gpu: dict[str, Any] = {"nvidia_smi": smi.stdout.strip() or smi.stderr.strip()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu |= {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    tensorrt, tensorrt_missing = _version("tensorrt")
    ort, _ = _version("onnxruntime")
    import onnxruntime

    return {
        "gpu": gpu,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": ort,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "tensorrt": tensorrt,
        "tensorrt_missing": tensorrt_missing,
    }


def parity(accuracy: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each GPU runtime's AUROCs against ONNX Runtime's at the same precision (FP32 if that one was
    not measured), on the same frames."""
    checks = []
    for name, result in accuracy.items():
        backend, precision = name.split("-", 1)
        if backend == "onnxruntime":
            continue
        reference = (
            f"onnxruntime-{precision}" if f"onnxruntime-{precision}" in accuracy else "onnxruntime-fp32"
        )
        if reference not in accuracy:
            continue
        deltas = {k: result[k] - accuracy[reference][k] for k in AUROCS}
        tolerance = TOLERANCE[precision]
        checks.append(
            {
                "runtime": name,
                "reference": reference,
                **{k: result[k] for k in AUROCS},
                **{f"reference_{k}": accuracy[reference][k] for k in AUROCS},
                **{f"delta_{k}": v for k, v in deltas.items()},
                "tolerance": tolerance,
                "ok": all(abs(v) <= tolerance for v in deltas.values()),
            }
        )
    return checks


def end_to_end(report: dict[str, Any]) -> dict[str, Any]:
    """A service_ceiling.py result reduced to what was served and its frames/s per camera count."""
    (variant,) = report["summary"].values()
    return {
        "command": report["command"],
        "model": report["settings"].get("model", {"backend": "instant"}),
        "settings": {k: v for k, v in report["settings"].items() if k != "model"},
        "cameras": {
            cameras: {
                k: c[k]
                for k in (
                    "fps",
                    "fps_rounds",
                    "service_cpu_us_per_frame",
                    "broker_cpu_us_per_frame",
                    "live_e2e_p50_ms",
                    "live_e2e_p99_ms",
                )
            }
            for cameras, c in variant["cameras"].items()
        },
    }


def frames_used(data: Path) -> dict[str, Any]:
    """Which Ped2 test clips the runs read: a carried subset is not the 12-clip protocol."""
    clips = sorted(p.name for p in (data / "test").iterdir() if p.is_dir())
    frames = sum(1 for clip in clips for f in (data / "test" / clip).iterdir() if f.suffix == ".jpg")
    note = f"Ped2 test clips {' '.join(clips)} ({frames} frames)"
    if len(clips) < 12:
        note += "; AUROC parity compares runtimes on these frames, not the 12-clip protocol's numbers"
    return {"root": str(data), "test_clips": clips, "test_frames": frames, "note": note}


def _read(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def collect(args: argparse.Namespace) -> int:
    environment = _read(args.environment) or {}
    runtimes = _read(args.runtimes)
    checkpoint = Path(args.checkpoint)
    model_only = runtimes["runs"][checkpoint.name] if runtimes else None
    e2e, ceiling = _read(args.e2e), _read(args.ceiling)
    checks = parity(model_only["accuracy"]) if model_only else []
    steps = {}
    if args.timings is not None and args.timings.is_file():
        for line in args.timings.read_text().splitlines():
            step, _, seconds = line.partition("\t")
            steps[step] = float(seconds)
    report = {
        **run_record(checkpoint),
        "script": args.script_command,
        "commit": args.commit,
        "environment": environment,
        "data": frames_used(args.data) if args.data else None,
        "tensorrt": {"version": environment.get("tensorrt"), "missing": environment.get("tensorrt_missing")},
        "model_only": model_only,
        "parity": checks,
        "parity_ok": all(c["ok"] for c in checks) if checks else None,
        "end_to_end": end_to_end(e2e) if e2e else None,
        "ceiling": end_to_end(ceiling) if ceiling else None,
        "step_seconds": steps,
    }
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if report["parity_ok"] is False:
        failed = ", ".join(c["runtime"] for c in checks if not c["ok"])
        print(f"gpu_check: AUROC parity failed for {failed} (see {out.with_suffix('.md')})", file=sys.stderr)
        return 1
    return 0


def _fps(run: dict[str, Any], backend: str, precision: str, batch: int) -> float | None:
    return next(
        (
            r["fps"]
            for r in run["rows"]
            if (r["backend"], r["precision"], r["batch"]) == (backend, precision, batch)
        ),
        None,
    )


def headline(report: dict[str, Any]) -> str:
    """One line for RESULTS.md: the GPU, the fastest GPU runtime at batch 8, end to end at 16
    cameras, and the parity verdict."""
    env = report["environment"]
    gpu = env.get("gpu", {}).get("name", "no GPU seen")
    parts = [gpu]
    trt = report["tensorrt"]
    if not trt["version"]:
        parts.append(f"TensorRT not available ({trt['missing']})")
    run = report["model_only"]
    if run:
        for backend, precision in (("tensorrt", "fp16"), ("tensorrt", "int8"), ("torch", "fp16")):
            fps = _fps(run, backend, precision, 8)
            if fps is not None:
                parts.append(f"{backend} {precision.upper()} batch 8 **{fps:.0f}** frames/s")
    e2e = report["end_to_end"]
    if e2e:
        cams = e2e["cameras"]
        at = "16" if "16" in cams else max(cams, key=int)
        parts.append(f"end to end ({e2e['model']['backend']}) {cams[at]['fps']:.0f} frames/s at {at} cameras")
    if report["parity"]:
        worst = max(abs(c["delta_auroc_causal_micro"]) for c in report["parity"])
        verdict = "holds" if report["parity_ok"] else "**fails**"
        parts.append(f"AUROC parity with ONNX Runtime {verdict} (max |Δ| causal micro {worst:.4f})")
    return "; ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    gpu = env.get("gpu", {})
    trt = report["tensorrt"]
    lines = [
        "# GPU check (model only and end to end)",
        "",
        f"`{report['script'] or report['command']}` ({report['date']}, commit {report['commit']})",
        "",
        f"GPU: {gpu.get('nvidia_smi', 'none')}; {env.get('cpu_cores')} CPU cores; "
        f"Python {env.get('python')}, "
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), onnxruntime {env.get('onnxruntime')} "
        f"({', '.join(env.get('onnxruntime_providers', []))}); TensorRT "
        + (trt["version"] or f"not available: {trt['missing']}")
        + ".",
    ]
    if report["data"]:
        lines += ["", f"Data: {report['data']['note']}"]
    run = report["model_only"]
    if run:
        from runtimes import run_markdown

        lines += ["", "## Model only (benchmarks/runtimes.py)", "", *run_markdown(run)]
    if report["parity"]:
        lines += [
            "",
            "## AUROC parity with ONNX Runtime (same frames)",
            "",
            "| runtime | reference | causal micro | reference | Δ | pixel | reference | Δ | tolerance | ok |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in report["parity"]:
            lines.append(
                f"| {c['runtime']} | {c['reference']} | {c['auroc_causal_micro']:.4f} | "
                f"{c['reference_auroc_causal_micro']:.4f} | {c['delta_auroc_causal_micro']:+.4f} | "
                f"{c['pixel_auroc']:.4f} | {c['reference_pixel_auroc']:.4f} | "
                f"{c['delta_pixel_auroc']:+.4f} | {c['tolerance']} | {'yes' if c['ok'] else '**no**'} |"
            )
    for key, title in (("end_to_end", "End to end"), ("ceiling", "The service alone (instant model)")):
        e2e = report[key]
        if not e2e:
            continue
        m = e2e["model"]
        served = "instant model" if m["backend"] == "instant" else f"{m['backend']} {m['precision']}"
        lines += [
            "",
            f"## {title}: `anomon run`, {served}, embedded broker, Ped2 JPEGs",
            "",
            f"`{e2e['command']}`",
            "",
            "| cameras | frames/s (saturated) | service µs/frame | broker µs/frame | live p50 / p99 ms |",
            "|---|---|---|---|---|",
        ]
        for cameras, c in e2e["cameras"].items():
            lines.append(
                f"| {cameras} | **{c['fps']:.0f}** | {c['service_cpu_us_per_frame']:.0f} | "
                f"{c['broker_cpu_us_per_frame']:.0f} | {c['live_e2e_p50_ms']:.0f} / "
                f"{c['live_e2e_p99_ms']:.0f} |"
            )
        s = e2e["settings"]
        lines += [
            "",
            f"{s['frames_per_saturated_run']} frames pre-loaded per saturated run, batching.max_batch "
            f"{s['max_batch']}, live runs at {s['live_fps']:.0f} frames/s of all cameras for "
            f"{s['live_seconds']:.0f} s.",
        ]
    if report["step_seconds"]:
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in report["step_seconds"].items())
        lines += ["", f"Steps: {steps}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="record the machine")
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("collect", help="merge the pieces into one result")
    c.add_argument("--checkpoint", default=str(ANOMEM_ARTIFACT))
    c.add_argument("--environment", type=Path)
    c.add_argument("--runtimes", type=Path, help="benchmarks/runtimes.py's result")
    c.add_argument("--e2e", type=Path, help="benchmarks/service_ceiling.py's result with a real model")
    c.add_argument("--ceiling", type=Path, help="benchmarks/service_ceiling.py's result, instant model")
    c.add_argument("--timings", type=Path, help="STEP<TAB>SECONDS lines")
    c.add_argument("--data", type=Path, help="the Ped2 root the runs read (its test clips are recorded)")
    c.add_argument("--script-command", help="the gpu_check.sh command line")
    c.add_argument("--commit", default="unknown")
    c.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    args = parser.parse_args(argv)
    if args.command == "probe":
        env = probe()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(env, indent=2) + "\n")
        for key, value in env.items():
            print(f"  {key}: {value}")
        return 0
    return collect(args)


if __name__ == "__main__":
    sys.exit(main())
