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

from model.evaluation import evaluate_path
from model.export import export_artifact
from model.runtime import open_runtime
from model.runtime.base import Runtime
from model.runtime.bench import LatencyStats, sample_frames, time_calls


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
    parser.add_argument("--out", default=str(RESULTS / "runtimes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scratch = tempfile.TemporaryDirectory(prefix="anomon-runtimes-")  # removed when main returns
    work = Path(scratch.name)
    artifacts = {}
    for precision in ("fp32", "fp16", "int8"):
        artifacts[precision] = work / precision
        export_artifact(args.checkpoint, artifacts[precision], precision, calibration_data=args.data)
    runtimes: dict[tuple[str, str], Runtime] = {
        ("torch", "fp32"): open_runtime(args.checkpoint, "torch", device="cpu", threads=args.threads),
    }
    for precision, path in artifacts.items():
        runtimes[("onnxruntime", precision)] = open_runtime(
            path, "onnxruntime", device="cpu", threads=args.threads
        )

    configs = [(key, batch) for key in runtimes for batch in args.batch_sizes]
    frames = {batch: sample_frames(runtimes[("torch", "fp32")], batch) for batch in args.batch_sizes}
    seconds: dict[tuple[tuple[str, str], int], list[float]] = {c: [] for c in configs}
    for key, batch in configs:  # warm-up
        time_calls(runtimes[key], frames[batch], 2)
    for _ in tqdm(range(args.rounds), desc="interleaved rounds", unit="round"):
        for key, batch in configs:
            seconds[(key, batch)] += time_calls(runtimes[key], frames[batch], args.calls)

    rows = []
    for (backend, precision), batch in configs:
        stats = LatencyStats.from_seconds(batch, seconds[((backend, precision), batch)])
        rows.append({"backend": backend, "precision": precision, **stats.__dict__})

    def fps(backend: str, precision: str, batch: int) -> float:
        return next(
            r["fps"]
            for r in rows
            if (r["backend"], r["precision"], r["batch"]) == (backend, precision, batch)
        )

    ratios = {
        f"onnxruntime_fp32_vs_torch_fp32_batch{b}": fps("onnxruntime", "fp32", b) / fps("torch", "fp32", b)
        for b in args.batch_sizes
    } | {
        f"int8_vs_fp32_onnxruntime_batch{b}": fps("onnxruntime", "int8", b) / fps("onnxruntime", "fp32", b)
        for b in args.batch_sizes
    }

    accuracy = {}
    if not args.skip_accuracy:
        for precision in artifacts:
            runtime = runtimes[("onnxruntime", precision)]
            result = evaluate_path(
                runtime,
                runtime.model.config,
                args.data,
                runtime.model.config.train.smoothing_frames,
                calibration=runtime.model.calibration,
            )
            accuracy[f"onnxruntime-{precision}"] = {
                k: result[k]
                for k in ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")
            }
        torch_rt = runtimes[("torch", "fp32")]
        result = evaluate_path(
            torch_rt,
            torch_rt.model.config,
            args.data,
            torch_rt.model.config.train.smoothing_frames,
            calibration=torch_rt.model.calibration,
        )
        accuracy["torch-fp32"] = {
            k: result[k] for k in ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")
        }

    run = {
        **run_record(args.checkpoint),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": None,
        },
        "protocol": f"interleaved: {args.rounds} rounds x {args.calls} calls per configuration; "
        "latency = one infer() call, uint8 frames in, score and map back on the host; fps = batch / p50",
        "int8": json.loads((artifacts["int8"] / "model.json").read_text())["quantization"],
        "rows": rows,
        "ratios": ratios,
        "accuracy": accuracy,
    }
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    report["runs"][Path(args.checkpoint).name] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """One section per checkpoint: its command and date, the timings, the ratios, the accuracy."""
    lines = ["# Runtimes on this CPU (model only)"]
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
        "| backend | precision | batch | frames/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in run["rows"]:
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['fps']:.1f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )
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
