"""Scoring speed and size of checkpoints side by side, measured in interleaved rounds.

The machine these benchmarks run on is shared, so one model measured after another can see a
different load: each round measures every checkpoint once (median over batches of 32) and the
report gives the median over rounds and the best round. Accuracy comes from each model's own
benchmark results.

    python benchmarks/compare_models.py benchmarks/artifacts/anomem_ped2.safetensors \\
        benchmarks/artifacts/daad_ped2.safetensors --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from ped2_anomem import median_fps
from report import cpu_name

from model.pipeline import load_model

ROOT = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="checkpoints to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument(
        "--out", default=str(ROOT / "results" / "model_comparison.json"), help="JSON file to write"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [load_model(path) for path in args.checkpoints]
    rounds: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for (model, meta), fps in zip(models, rounds, strict=True):
            spec = meta.config.input
            fps.append(median_fps(model, spec.channels, spec.height, spec.width))
    rows = []
    for path, (model, meta), fps in zip(args.checkpoints, models, rounds, strict=True):
        spec = meta.config.input
        rows.append(
            {
                "checkpoint": path,
                "model": meta.name,
                "input": f"{spec.height}x{spec.width}, motion {spec.motion}",
                "parameters": sum(p.numel() for p in model.parameters()),
                "checkpoint_mb": round(Path(path).stat().st_size / 2**20, 2),
                "fps_median_of_rounds": round(statistics.median(fps), 1),
                # The least disturbed round: the closest to the speed on an idle machine.
                "fps_best_round": round(max(fps), 1),
                "fps_rounds": [round(f, 1) for f in fps],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    env = {"command": " ".join(["python", *sys.argv]), "machine": cpu_name(), "threads": args.threads}
    Path(args.out).write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
