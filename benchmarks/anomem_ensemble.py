"""A test-set diagnostic: do several AnoMem trainings (seeds) scored together beat each one alone?

The members' raw one-class scores are added (each is already a sum of terms standardized over normal
frames, so they share a scale) and their anomaly maps averaged; the sum is calibrated on the first
member's held-out training clips, as training calibrates one model, then evaluated with the
protocol of `anomon eval` (benchmarks/README.md). Not a product feature: it costs one forward pass
per member.

    python benchmarks/anomem_ensemble.py runs/ped2/anomem-default.safetensors SEED2.safetensors \\
        --data ../shared/data/ucsd_ped2 --threads 2 --out benchmarks/results/anomem_v8_seed_ensemble.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from model.data import load_clips
from model.evaluation import evaluate_path
from model.pipeline import calibrate_on, load_model, split_holdout

KEYS = (
    "auroc_causal_micro",
    "auroc_causal_micro_unsmoothed",
    "auroc_paper_micro",
    "auroc_macro",
    "pixel_auroc",
)


class ScoreSum(nn.Module):
    """Sum of the members' raw scores, mean of their anomaly maps."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [m(frames) for m in self.members]
        return sum(o[0] for o in outputs), sum(o[1] for o in outputs) / len(outputs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="AnoMem checkpoints of one configuration (2 or more)")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give at least 2 checkpoints")
    torch.set_num_threads(args.threads)
    loaded = [load_model(p) for p in args.checkpoints]
    configs = {json.dumps(meta.config.input.model_dump()) for _, meta in loaded}
    if len(configs) != 1 or any(meta.config.model.name != "anomem" for _, meta in loaded):
        print(
            "anomem_ensemble: error: the checkpoints must be AnoMem models with one input spec",
            file=sys.stderr,
        )
        return 2
    cfg = loaded[0][1].config
    model = ScoreSum([m for m, _ in loaded]).eval()
    _, holdout = split_holdout(load_clips(args.data, cfg.input, split="train"), cfg.train.holdout_fraction)
    calibration, _ = calibrate_on(model, holdout, cfg, cfg.train.false_alarm_rate)
    ensemble = evaluate_path(model, cfg, args.data, cfg.train.smoothing_frames, calibration=calibration)
    members = [
        evaluate_path(
            m, meta.config, args.data, meta.config.train.smoothing_frames, calibration=meta.calibration
        )
        for m, meta in loaded
    ]
    result = {
        "command": " ".join(["python", "benchmarks/anomem_ensemble.py", *sys.argv[1:]]),
        "members": [
            {"checkpoint": p, **{k: round(float(r[k]), 4) for k in KEYS}}
            for p, r in zip(args.checkpoints, members, strict=True)
        ],
        "score_sum": {k: round(float(ensemble[k]), 4) for k in KEYS},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
