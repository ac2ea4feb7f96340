"""Runtimes side by side on this machine: frames/s and p50/p99 latency per backend, precision and batch.

Every configuration is timed in interleaved rounds (round r times every configuration once before
round r+1 starts), so load drift on a shared machine hits all of them alike; ratios are taken from
the same run. Accuracy: Ped2 causal micro AUROC of each precision through ONNX Runtime (MODELS.md
protocol, `anomon eval`), so the FP16/INT8 bound is checked on the same artifacts that were timed.

Each checkpoint's run replaces its own entry of benchmarks/results/runtimes.json (`runs`, keyed by the
checkpoint's file name), so the committed models are measured one command each:

    python benchmarks/runtimes.py --checkpoint benchmarks/artifacts/anomem_ped2.safetensors \
        --data ../shared/data/ucsd_ped2 --threads 2
    python benchmarks/runtimes.py --checkpoint benchmarks/artifacts/daad_ped2.safetensors \
        --data ../shared/data/ucsd_ped2 --threads 2

On a GPU (what benchmarks/gpu_check.sh runs): `--device cuda` puts PyTorch on the GPU, `--runtimes`
adds TensorRT, `--int8-target tensorrt` exports the INT8 graph TensorRT takes (ONNX Runtime then runs
the same graph), and `--artifacts DIR` reuses exports made beforehand (DIR/fp32, DIR/fp16, DIR/int8):

    python benchmarks/runtimes.py --device cuda --int8-target tensorrt --artifacts /tmp/exports \
        --runtimes torch-fp16 onnxruntime-fp16 tensorrt-fp16 onnxruntime-int8 tensorrt-int8 \
        --data ../shared/data/ucsd_ped2 --out /tmp/runtimes_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from results_io import ANOMEM_ARTIFACT, RESULTS, repo_path, run_record
from tqdm import tqdm

from model.checkpoint import load_checkpoint
from model.evaluation import evaluate_path
from model.export import META_FILE, export_artifact, load_artifact_meta
from model.runtime import open_runtime
from model.runtime.base import Runtime
from model.runtime.bench import LatencyStats, sample_frames, time_calls

DEFAULT_RUNTIMES = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def parse_runtime(spec: str, device: str) -> tuple[str, str]:
    """`BACKEND-PRECISION` (e.g. tensorrt-fp16) as (backend, precision).

    Raises:
        ValueError: an unknown backend or precision, or one the backend cannot run on `device`.
    """
    backend, _, precision = spec.partition("-")
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(
            f"runtime {spec!r}: expected BACKEND-PRECISION with BACKEND one of {', '.join(BACKENDS)} "
            f"and PRECISION one of {', '.join(PRECISIONS)}, e.g. tensorrt-fp16"
        )
    if backend == "torch" and precision == "int8":
        raise ValueError("runtime torch-int8: PyTorch serves fp32 and fp16 only; use onnxruntime-int8")
    if backend == "torch" and precision == "fp16" and device != "cuda":
        raise ValueError("runtime torch-fp16 needs --device cuda (FP16 autocast runs on a GPU)")
    return backend, precision


def exported(checkpoint: str, folder: Path, precision: str, calibration_data: str, int8_target: str) -> Path:
    """FOLDER, holding the checkpoint's export at `precision`: reused when it is that checkpoint's
    (same weights and calibrations; for int8 the same target), else exported there."""
    if (folder / META_FILE).is_file():
        meta = load_artifact_meta(folder)
        _, ckpt = load_checkpoint(checkpoint)
        same_model = (meta.weights_sha256, meta.calibration, meta.map_calibration) == (
            ckpt.weights_sha256,
            ckpt.calibration,
            ckpt.map_calibration,
        )
        target = meta.quantization.get("target", "cpu") if precision == "int8" else int8_target
        if same_model and meta.precision == precision and target == int8_target:
            return folder
        raise ValueError(
            f"{folder} holds another export ({meta.name} {meta.precision}, int8 target {target}); "
            "remove it or pass another --artifacts folder"
        )
    export_artifact(checkpoint, folder, precision, calibration_data=calibration_data, int8_target=int8_target)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=repo_path(ANOMEM_ARTIFACT))
    parser.add_argument(
        "--data", default="../shared/data/ucsd_ped2", help="Ped2 root (INT8 calibration: train/)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per configuration per round")
    parser.add_argument("--skip-accuracy", action="store_true", help="timing only")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=list(DEFAULT_RUNTIMES),
        metavar="BACKEND-PRECISION",
        help=f"what to time (default: {' '.join(DEFAULT_RUNTIMES)}); backends {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="PyTorch's device; ONNX Runtime takes its CUDA provider with cuda when it has one, else "
        "the CPU (each row records where it ran); TensorRT always runs on the GPU",
    )
    parser.add_argument(
        "--int8-target",
        choices=("cpu", "tensorrt"),
        default="cpu",
        help="the INT8 export's form (anomon export --int8-target): tensorrt for TensorRT rows",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="folder of exports to reuse (DIR/fp32, DIR/fp16, DIR/int8, as `anomon export` writes "
        "them); missing ones are exported there (default: a temporary folder)",
    )
    parser.add_argument("--engine-cache", type=Path, help="TensorRT engine folder (default: each export's)")
    parser.add_argument("--out", default=str(RESULTS / "runtimes.json"))
    args = parser.parse_args()
    try:
        specs = [parse_runtime(spec, args.device) for spec in args.runtimes]
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)

    scratch = tempfile.TemporaryDirectory(prefix="anomon-runtimes-")  # removed when main returns
    work = args.artifacts or Path(scratch.name)
    artifacts = {
        precision: exported(args.checkpoint, work / precision, precision, args.data, args.int8_target)
        for precision in dict.fromkeys(p for b, p in specs if b != "torch" or p == "fp16")
    }

    def opened(backend: str, precision: str) -> Runtime:
        if backend == "torch" and precision == "fp32":
            return open_runtime(args.checkpoint, "torch", device=args.device, threads=args.threads)
        ort_device = None if args.device == "cuda" else "cpu"  # None: its CUDA provider if present
        device = {"torch": args.device, "onnxruntime": ort_device, "tensorrt": "cuda"}[backend]
        return open_runtime(
            artifacts[precision], backend, device=device, threads=args.threads, engine_cache=args.engine_cache
        )

    runtimes: dict[tuple[str, str], Runtime] = {}
    for backend, precision in tqdm(specs, desc="opening runtimes", unit="runtime"):
        runtimes[(backend, precision)] = opened(backend, precision)  # TensorRT: builds its engine

    configs = [(key, batch) for key in runtimes for batch in args.batch_sizes]
    first = next(iter(runtimes.values()))
    frames = {batch: sample_frames(first, batch) for batch in args.batch_sizes}
    seconds: dict[tuple[tuple[str, str], int], list[float]] = {c: [] for c in configs}
    for key, batch in configs:  # warm-up
        time_calls(runtimes[key], frames[batch], 2)
    for _ in tqdm(range(args.rounds), desc="interleaved rounds", unit="round"):
        for key, batch in configs:
            seconds[(key, batch)] += time_calls(runtimes[key], frames[batch], args.calls)

    rows = []
    for (backend, precision), batch in configs:
        stats = LatencyStats.from_seconds(batch, seconds[((backend, precision), batch)])
        device = runtimes[(backend, precision)].device
        rows.append({"backend": backend, "precision": precision, "device": device, **stats.__dict__})

    accuracy = {}
    if not args.skip_accuracy:
        for (backend, precision), runtime in tqdm(runtimes.items(), desc="Ped2 accuracy", unit="runtime"):
            result = evaluate_path(
                runtime,
                runtime.model.config,
                args.data,
                runtime.model.config.train.smoothing_frames,
                calibration=runtime.model.calibration,
            )
            accuracy[f"{backend}-{precision}"] = {
                k: result[k]
                for k in ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")
            }

    run = {
        **run_record(args.checkpoint),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        }
        | ({"tensorrt": tensorrt_version()} if any(b == "tensorrt" for b, _ in specs) else {}),
        "protocol": f"interleaved: {args.rounds} rounds x {args.calls} calls per configuration; "
        "latency = one infer() call, uint8 frames in, score and map back on the host; fps = batch / p50",
        "int8": json.loads((artifacts["int8"] / META_FILE).read_text())["quantization"]
        if "int8" in artifacts
        else None,
        "rows": rows,
        "ratios": ratios(rows, args.batch_sizes),
        "accuracy": accuracy,
    }
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    report["runs"][Path(args.checkpoint).name] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def ratios(rows: list[dict], batch_sizes: list[int]) -> dict[str, float]:
    """Same-run frames/s ratios per batch size, for the pairs that were both timed: ONNX Runtime FP32
    over PyTorch FP32, INT8 over FP32 on ONNX Runtime, and each TensorRT precision over PyTorch FP32."""
    fps = {(r["backend"], r["precision"], r["batch"]): r["fps"] for r in rows}
    pairs = [
        ("onnxruntime_fp32_vs_torch_fp32", ("onnxruntime", "fp32"), ("torch", "fp32")),
        ("int8_vs_fp32_onnxruntime", ("onnxruntime", "int8"), ("onnxruntime", "fp32")),
        *((f"tensorrt_{p}_vs_torch_fp32", ("tensorrt", p), ("torch", "fp32")) for p in PRECISIONS),
        *((f"tensorrt_{p}_vs_torch_fp16", ("tensorrt", p), ("torch", "fp16")) for p in PRECISIONS),
    ]
    return {
        f"{name}_batch{b}": fps[(*top, b)] / fps[(*bottom, b)]
        for name, top, bottom in pairs
        for b in batch_sizes
        if (*top, b) in fps and (*bottom, b) in fps
    }


def tensorrt_version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


def markdown(report: dict) -> str:
    """One section per checkpoint: its command and date, the timings, the ratios, the accuracy."""
    lines = ["# Runtimes (model only)"]
    for name, run in report["runs"].items():
        lines += ["", f"## {name}", "", *run_markdown(run)]
    return "\n".join(lines) + "\n"


def run_markdown(run: dict) -> list[str]:
    lines = [
        f"`{run['command']}` ({run['date']})",
        "",
        f"{run['protocol']}. Threads: {run['machine']['threads']}; torch {run['machine']['torch']}, "
        f"onnxruntime {run['machine']['onnxruntime']}.",
        "",
        "| backend | precision | device | batch | frames/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in run["rows"]:
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r.get('device', 'cpu')} | {r['batch']} | "
            f"{r['fps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )
    if run["ratios"]:
        lines += ["", "| ratio (same run) | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f}x |" for k, v in run["ratios"].items()]
    if run["accuracy"]:
        lines += [
            "",
            "| Ped2 (causal micro AUROC protocol) | causal micro | paper micro | macro | pixel |",
            "|---|---|---|---|---|",
        ]
        for name, a in run["accuracy"].items():
            lines.append(
                f"| {name} | {a['auroc_causal_micro']:.4f} | {a['auroc_paper_micro']:.4f} | "
                f"{a['auroc_macro']:.4f} | {a['pixel_auroc']:.4f} |"
            )
    return lines


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
