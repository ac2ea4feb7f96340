"""What a motion model makes of a frame paired with one further back than the frame before it.

Each committed Ped2 checkpoint scores the held-out normal training clips (the clips its calibration
was fitted on) with every frame paired with the frame `gap` frames back (gap 1: as trained) and with
itself (gap 0: what the service does when the previous frame is unusable, `monitor/pairing.py`).
Reported: the share of frames whose normalized score is above 0.5 (the calibrated per-frame
threshold, fitted for a 1 % false-alarm rate at gap 1) and the mean normalized score. No test labels.

    python benchmarks/motion_gaps.py --data ../shared/data/ucsd_ped2 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import ANOMEM_ARTIFACT, DAAD_ARTIFACT, environment, write_report
from tqdm import tqdm

from model.data import load_clips
from model.pipeline import load_model, score_inputs, split_holdout

CHECKPOINTS = [ANOMEM_ARTIFACT, DAAD_ARTIFACT]
RESULTS = Path(__file__).parent / "results"


def paired(frames: np.ndarray, gap: int) -> np.ndarray:
    """uint8 [T, C, H, W] -> [T - gap, 2C, H, W]: frame t with frame t - gap (gap 0: with itself)."""
    return np.concatenate([frames[gap:], frames[: len(frames) - gap]], axis=1)


def measure(checkpoint: Path, data: str, gaps: list[int]) -> list[dict[str, Any]]:
    model, meta = load_model(checkpoint)
    cfg = meta.config
    if not cfg.input.motion or meta.calibration is None:
        raise SystemExit(f"motion_gaps: {checkpoint} is not a calibrated motion model")
    _, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    rows = []
    for gap in tqdm(gaps, desc=checkpoint.stem, unit="gap"):
        normalized = []
        for clip in holdout:
            raw, _ = score_inputs(model, paired(clip.frames, gap), desc=f"gap {gap}")
            normalized.append(meta.calibration.normalize(raw))
        scores = np.concatenate(normalized)
        rows.append(
            {
                "checkpoint": checkpoint.name,
                "gap": gap,
                "frames": len(scores),
                "above_threshold": round(float((scores > 0.5).mean()), 4),
                "mean_normalized_score": round(float(scores.mean()), 4),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="*", default=[str(c) for c in CHECKPOINTS])
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--gaps", type=int, nargs="+", default=[0, 1, 2, 3, 5], help="frames back")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "motion_gaps.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for c in args.checkpoints for row in measure(Path(c), args.data, args.gaps)]
    report = {
        **environment(*args.checkpoints),
        "protocol": "held-out normal training clips of each checkpoint; frame t paired with frame t - gap "
        "(0: itself); share of frames with normalized score > 0.5 (threshold calibrated at gap 1 for 1 % "
        "false alarms) and mean normalized score",
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        "Normal frames paired across a gap (held-out Ped2 training clips)",
        ["checkpoint", "paired with", "frames", "above threshold", "mean normalized score"],
        [
            [
                r["checkpoint"],
                "itself" if r["gap"] == 0 else f"{r['gap']} frame{'s' if r['gap'] > 1 else ''} back",
                str(r["frames"]),
                f"{100 * r['above_threshold']:.1f} %",
                f"{r['mean_normalized_score']:.2f}",
            ]
            for r in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
