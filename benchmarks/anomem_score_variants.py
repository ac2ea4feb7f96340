"""Two changes to how AnoMem's one-class score combines its terms, scored on Ped2's test set.

Written down before they were scored (benchmarks/README.md, "Tried on v8, 2026-11-24 07:00"):

- first-frame-neutral: a frame paired with itself (no predecessor: each clip's first frame) has no
  motion information, and its speed term (standardized, -7.7 for a still frame) is set to the
  normal mean (0) instead of pulling the score down;
- one-sided: each standardized term is clamped at 0 from below, so that a term below its normal
  mean (e.g. less motion than usual) cannot cancel another term's evidence.

Each variant is calibrated on the checkpoint's held-out clean training clips (as training does),
smoothed as the live monitor smooths and scored with the MODELS.md protocol. No network is changed.

    python benchmarks/anomem_score_variants.py benchmarks/artifacts/anomem_ped2.safetensors \
        runs/ped2/v8-seed2.safetensors --data ../shared/data/ucsd_ped2 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomem_terms import standardized_terms
from report import environment, write_report
from tqdm import tqdm

from model.anomem.model import AnoMem
from model.calibration import calibrate
from model.data import load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import frame_aurocs
from model.pipeline import load_model, split_holdout

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "v8 (as committed)": (False, False),
    "first-frame-neutral": (True, False),
    "one-sided": (False, True),
    "first-frame-neutral + one-sided": (True, True),
}
METRICS = ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro")


def combine(terms: np.ndarray, first_neutral: bool, one_sided: bool) -> np.ndarray:
    """A clip's raw one-class scores [T] from its standardized terms [T, scales + speed]."""
    terms = terms.copy()
    if first_neutral:
        terms[0, -1] = 0.0
    if one_sided:
        terms = np.maximum(terms, 0.0)
    return terms.mean(axis=1)


def analyse(checkpoint: str, data: str) -> list[dict[str, Any]]:
    model, meta = load_model(checkpoint)
    cfg = meta.config
    if not isinstance(model, AnoMem) or not cfg.input.motion or cfg.model.score_weights is not None:
        raise SystemExit(f"anomem_score_variants: {checkpoint} is not an equal-weight AnoMem with motion")
    clips = load_clips(data, cfg.input, split="test")
    labels = [c.labels for c in clips]
    test = [standardized_terms(model, with_motion(c.frames, cfg.input)) for c in tqdm(clips, desc="test")]
    _, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    clean = [standardized_terms(model, with_motion(c.frames, cfg.input)) for c in holdout]
    rows = []
    for name, (first_neutral, one_sided) in VARIANTS.items():
        calibration = calibrate(
            np.concatenate([combine(t, first_neutral, one_sided) for t in clean]), cfg.train.false_alarm_rate
        )
        smoothed = [
            live_scores(combine(t, first_neutral, one_sided), calibration, cfg.train.smoothing_frames)
            for t in test
        ]
        result = frame_aurocs(labels, smoothed)  # type: ignore[arg-type]
        rows.append({"checkpoint": checkpoint, "variant": name} | {k: round(result[k], 4) for k in METRICS})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="AnoMem checkpoints (motion, equal score weights)")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "anomem_score_variants.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for c in args.checkpoints for row in analyse(c, args.data)]
    report = {
        **environment(),
        "command": " ".join(["python", "benchmarks/anomem_score_variants.py", *sys.argv[1:]]),
        "protocol": "MODELS.md on all 2010 Ped2 test frames (a test-set ablation, rule written before: "
        "benchmarks/README.md); calibration on the held-out clean training clips",
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        "AnoMem: two ways of combining the score terms (Ped2 test set; an ablation)",
        ["checkpoint", "variant", "causal micro", "paper micro", "macro"],
        [[Path(r["checkpoint"]).name, r["variant"], *(f"{r[k]:.4f}" for k in METRICS)] for r in rows],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
