"""Compare checkpoints on synthetic anomalies added to held-out normal clips: no test labels involved.

Each checkpoint scores its own held-out training clips (the ones its calibration used) with synthetic
events inserted (model/pseudo_anomaly.py, fixed seeds); the AUROC of the scores as the live monitor
smooths them (calibrated, then a causal mean) is reported. Two kinds of event:

- fast-patches: scene patches moving much faster than anything in normal footage (`add_moving_patches`)
- foreign-objects: CIFAR-10 test photographs (all ten classes, grey) at a person's height crossing the
  scene from standing still up to a few times walking pace (`add_foreign_objects`)

This is the label-free rule used to choose between model settings.

    python benchmarks/pseudo_validation.py runs/ped2/*.safetensors --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile

import cv2
import numpy as np
import torch

from model.checkpoint import CheckpointMeta
from model.data import Clip, load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import auroc
from model.pipeline import load_model, score_inputs, split_holdout
from model.pseudo_anomaly import add_foreign_objects, add_moving_patches

KINDS = ("fast-patches", "foreign-objects")
OBJECTS = "../shared/data/cifar10/cifar10_jpg.zip"


def load_objects(path: str, count: int = 1000) -> np.ndarray:
    """`count` grayscale images spread evenly over a CIFAR-10 JPEG zip's test split (all classes)."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        if not names:
            raise SystemExit(f"{path} holds no test/<class>/*.jpg images")
        picked = names[:: max(1, len(names) // count)][:count]
        images = [
            cv2.imdecode(np.frombuffer(archive.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) for n in picked
        ]
    return np.stack(images)


def add_events(
    kind: str, frames: np.ndarray, rng: np.random.Generator, objects: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One clip with synthetic events of `kind` (KINDS) and its 0/1 frame labels."""
    if kind == "fast-patches":
        return add_moving_patches(frames, rng)
    if kind == "foreign-objects" and objects is not None:
        return add_foreign_objects(frames, rng, objects)
    raise ValueError(f"unknown event kind {kind!r} (or no objects given for it); use one of {KINDS}")


def pseudo_auroc(
    checkpoint: str,
    data: str,
    seeds: tuple[int, ...] = (0,),
    kinds: tuple[str, ...] = ("fast-patches",),
    objects: np.ndarray | None = None,
) -> dict[str, float | str | dict[str, float]]:
    """`pseudo_aurocs` of a checkpoint file on the held-out clips of the footage in `data`."""
    model, meta = load_model(checkpoint)
    clips = load_clips(data, meta.config.input, split="train")
    return {"checkpoint": checkpoint, **pseudo_aurocs(model, meta, clips, seeds, kinds, objects)}


def pseudo_aurocs(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    train_clips: list[Clip],
    seeds: tuple[int, ...],
    kinds: tuple[str, ...],
    objects: np.ndarray | None,
) -> dict[str, float | dict[str, float]]:
    """AUROCs of a loaded model on its held-out clips (of `train_clips`, the split it trained on) with
    synthetic events, one per (kind, seed).

    `pseudo_auroc_smoothed` is their mean (each set scored as the monitor smooths), `sets` each one.
    """
    cfg = meta.config
    _, holdout = split_holdout(train_clips, cfg.train.holdout_fraction)
    sets: dict[str, float] = {}
    unsmoothed: list[float] = []
    for kind in kinds:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            labels, raw, smoothed = [], [], []
            for clip in holdout:
                frames, lab = add_events(kind, clip.frames, rng, objects)
                scores, _ = score_inputs(
                    model, with_motion(frames, cfg.input), desc=f"{kind} {seed} {clip.name}"
                )
                labels.append(lab)
                raw.append(scores)
                smoothed.append(live_scores(scores, meta.calibration, cfg.train.smoothing_frames))
            y = np.concatenate(labels)
            sets[f"{kind} seed {seed}"] = auroc(y, np.concatenate(smoothed))
            unsmoothed.append(auroc(y, np.concatenate(raw)))
    return {
        "pseudo_auroc_smoothed": float(np.mean(list(sets.values()))),
        "pseudo_auroc_unsmoothed": float(np.mean(unsmoothed)),
        "sets": sets,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="checkpoints to compare")
    parser.add_argument(
        "--data", default="../shared/data/ucsd_ped2", help="the footage the checkpoints trained on"
    )
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="seeds of the synthetic events")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=["fast-patches"], help="event kinds")
    parser.add_argument("--objects", default=OBJECTS, help="CIFAR-10 JPEG zip (foreign-objects only)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    objects = load_objects(args.objects) if "foreign-objects" in args.kind else None
    for checkpoint in args.checkpoints:
        result = pseudo_auroc(checkpoint, args.data, tuple(args.seed), tuple(args.kind), objects)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
