"""Compare checkpoints on synthetic anomalies added to held-out normal clips: no test labels involved.

Each checkpoint scores its own held-out training clips (the ones its calibration used) with fast
moving scene patches inserted (model/pseudo_anomaly.py, fixed seed); the AUROC of the scores as the
live monitor smooths them (calibrated, then a causal mean) is reported. This is the label-free rule
used to choose between model settings.

    python benchmarks/pseudo_validation.py runs/ped2/*.safetensors --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from model.data import load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import auroc
from model.pipeline import load_model, score_inputs, split_holdout
from model.pseudo_anomaly import add_moving_patches


def pseudo_auroc(checkpoint: str, data: str, seed: int) -> dict[str, float | str]:
    model, meta = load_model(checkpoint)
    cfg = meta.config
    _, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    rng = np.random.default_rng(seed)
    labels, raw, smoothed = [], [], []
    for clip in holdout:
        frames, lab = add_moving_patches(clip.frames, rng)
        scores, _ = score_inputs(model, with_motion(frames, cfg.input), desc=clip.name)
        labels.append(lab)
        raw.append(scores)
        smoothed.append(live_scores(scores, meta.calibration, cfg.train.smoothing_frames))
    y = np.concatenate(labels)
    return {
        "checkpoint": checkpoint,
        "pseudo_auroc_smoothed": auroc(y, np.concatenate(smoothed)),
        "pseudo_auroc_unsmoothed": auroc(y, np.concatenate(raw)),
        "frames": len(y),
        "anomalous_frames": int(y.sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="checkpoints to compare")
    parser.add_argument(
        "--data", default="../shared/data/ucsd_ped2", help="the footage the checkpoints trained on"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic events")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        print(json.dumps(pseudo_auroc(checkpoint, args.data, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
