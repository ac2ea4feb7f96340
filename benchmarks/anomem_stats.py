"""Ablation of AnoMem's stage-2 statistics on one trained stage 1 (a test-set ablation, reported as such).

The committed checkpoint's stage 1 is kept; the deviation statistics are refitted on its training
clips three ways (per-position mean and std with the std shrunk half-way to the pooled one, the
default; per-position mean with the pooled std; one mean and std per scale), each recalibrated on
the held-out training clips as `anomon train` does, then evaluated by the protocol of MODELS.md.
The first row must reproduce the checkpoint's own numbers: it checks the refit.

    python benchmarks/anomem_stats.py --data ../shared/data/ucsd_ped2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from report import write_report

from model.anomem import train as anomem_train
from model.anomem.model import AnoMem
from model.checkpoint import save_checkpoint
from model.data import load_clips
from model.evaluation import evaluate_path
from model.pipeline import calibrate_on, load_model, model_inputs, split_holdout
from model.runtime import open_runtime

RESULTS = Path(__file__).parent / "results"
# (row, per-position statistics, std shrinkage towards the pooled std)
VARIANTS = (
    ("per-position, std shrunk 0.5 (default)", True, 0.5),
    ("per-position mean, pooled std", True, 1.0),
    ("one mean and std per scale", False, 1.0),
)
METRICS = ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")


def refit(checkpoint: str, data: str, per_position: bool, shrinkage: float, out: Path) -> None:
    """Write `checkpoint` with its deviation statistics refitted and recalibrated to `out`."""
    model, meta = load_model(checkpoint)
    if not isinstance(model, AnoMem):
        raise SystemExit(f"anomem_stats: {checkpoint} is a {meta.name} checkpoint, not AnoMem")
    update = {"per_position_stats": per_position, "std_shrinkage": shrinkage}
    model.cfg = model.cfg.model_copy(update=update)  # what fit_deviation_stats reads
    cfg = meta.config.model_copy(update={"model": model.cfg})
    fit_clips, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    inputs = model_inputs(fit_clips, cfg)
    deviations = anomem_train.deviation_maps(model, inputs)
    anomem_train.fit_deviation_stats(model, deviations)
    anomem_train.fit_term_stats(model, inputs, deviations)
    calibration, map_calibration = calibrate_on(model, holdout, cfg, cfg.train.false_alarm_rate)
    meta = meta.model_copy(
        update={"config": cfg, "calibration": calibration, "map_calibration": map_calibration}
    )
    save_checkpoint(out, model.state_dict(), meta)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="benchmarks/artifacts/anomem_ped2.safetensors")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "anomem_stats.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="anomem-stats-")  # removed when main returns
    work = Path(scratch.name)
    rows: list[dict[str, Any]] = []
    for i, (name, per_position, shrinkage) in enumerate(VARIANTS):
        print(f"[{i + 1}/{len(VARIANTS)}] {name}")
        refitted = work / f"variant{i}.safetensors"
        refit(args.checkpoint, args.data, per_position, shrinkage, refitted)
        runtime = open_runtime(refitted, "torch", device="cpu", threads=args.threads)
        smoothing = runtime.model.config.train.smoothing_frames
        result = evaluate_path(
            runtime, runtime.model.config, args.data, smoothing, calibration=runtime.model.calibration
        )
        rows.append(
            {"variant": name, "per_position_stats": per_position, "std_shrinkage": shrinkage}
            | {k: result[k] for k in METRICS}
        )
        print(json.dumps(rows[-1]))
    report = {
        "command": f"python benchmarks/anomem_stats.py --data {args.data} --threads {args.threads}",
        "checkpoint": args.checkpoint,
        "protocol": "MODELS.md: all 2010 Ped2 test frames; a test-set ablation, not a tuning result",
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        "AnoMem stage-2 statistics on the committed stage 1 (Ped2 test set; an ablation)",
        ["statistics", "causal micro", "paper micro", "macro", "pixel"],
        [[r["variant"], *(f"{r[k]:.3f}" for k in METRICS)] for r in rows],
    )


if __name__ == "__main__":
    main()
