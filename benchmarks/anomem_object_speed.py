"""AnoMem's speed term read over one object's window instead of the fastest cells anywhere.

Written down before the test set was scored (benchmarks/README.md, "Tried on v8, 2026-11-24
08:03"). v8's speed term is the mean Lucas-Kanade speed of the 16 fastest 8x8-pixel cells wherever
they lie. In a crowd those 16 cells are the fastest limbs of many walkers, so the term grows with
the number of people, and the crowded normal clips of Ped2's test set outscore anomalies. The
variant, `object window`, is the largest mean speed over a window the size of one typical moving
object. The window is measured on the training frames, with no labels: the median bounding box of
the connected moving regions (speed above 0.5 px per frame, at least 16 pixels) rounded to 8-pixel
cells. Its statistics are fitted on the same training frames as the checkpoint's own terms, and the
score is calibrated on the held-out clean training clips, as training does.

Two label-free checks come first:
- the window: printed with the blob statistics;
- crowd sensitivity: on the held-out clips, the rank correlation of each speed term with the
  frame's moving area. The variant is meant to lower it.

The adoption rule, written before any test number: the variant becomes the default only if the
three-seed mean causal micro AUROC gains >= 0.005, no seed loses more than 0.002, and its crowd
correlation on the held-out clips is lower than the current term's.

    python benchmarks/anomem_object_speed.py runs/ped2/anomem-default.safetensors \
        runs/ped2/v8-seed1.safetensors runs/ped2/v8-seed2.safetensors --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from anomem_terms import standardized_terms
from report import environment, write_report
from tqdm import tqdm

from model.anomem.model import AnoMem, _pool_motion
from model.anomem.train import MOVING_SPEED, moving_region_sizes
from model.calibration import calibrate
from model.data import Clip, load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import frame_aurocs
from model.pipeline import load_model, split_holdout

RESULTS = Path(__file__).parent / "results"
METRICS = ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro")


@torch.no_grad()
def speed_maps(model: AnoMem, clip: Clip, batch: int = 64) -> np.ndarray:
    """[T, H, W] Lucas-Kanade speed of a clip's frame pairs at the input size (edges dropped)."""
    inputs = with_motion(clip.frames, model.spec)
    out = []
    for start in range(0, len(inputs), batch):
        _, motion = model.split_input(torch.from_numpy(inputs[start : start + batch]))
        assert motion is not None
        out.append(motion[:, 1].numpy())
    return np.concatenate(out)


def blob_window(speeds: list[np.ndarray]) -> tuple[tuple[int, int], dict[str, float]]:
    """The window (cells high, cells wide) of the median moving region's bounding box, measured as
    training measures it (`model.anomem.train.moving_region_sizes`)."""
    sizes = np.concatenate([moving_region_sizes(clip) for clip in speeds])
    h, w = (float(v) for v in np.median(sizes, axis=0))
    window = (max(1, round(h / 8)), max(1, round(w / 8)))
    return window, {"blobs": len(sizes), "median_height_px": h, "median_width_px": w}


def speed_terms(model: AnoMem, speed: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """[T, 2] raw speed terms: v8's (top-k fastest cells) and the object window's."""
    field = torch.from_numpy(speed)[:, None]
    motion = torch.cat([torch.zeros_like(field), field], dim=1)  # _pool_motion's [temporal, speed]
    cells = _pool_motion(motion, model.map_size, "lk")[:, 1:]
    topk = cells.flatten(1).topk(model.cfg.motion_topk, dim=1).values.mean(dim=1)
    windowed = F.avg_pool2d(cells, window, stride=1).flatten(1).amax(dim=1)
    return torch.stack([topk, windowed], dim=1).numpy()


def moving_area(speed: np.ndarray) -> np.ndarray:
    return (speed > MOVING_SPEED).mean(axis=(1, 2))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(checkpoint: str, data: str) -> dict[str, Any]:
    model, meta = load_model(checkpoint)
    cfg = meta.config
    if (
        not isinstance(model, AnoMem)
        or cfg.model.motion_features != "lk"
        or cfg.model.score_weights is not None
    ):
        raise SystemExit(f"anomem_object_speed: {checkpoint} is not an equal-weight AnoMem with lk motion")
    train, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    train_speed = [speed_maps(model, c) for c in tqdm(train, desc="training speeds")]
    window, blobs = blob_window(train_speed)
    tqdm.write(f"{Path(checkpoint).name}: object window {window} cells from {blobs}")
    raw_train = np.concatenate([speed_terms(model, s, window) for s in train_speed])
    mean, std = raw_train.mean(axis=0), raw_train.std(axis=0, ddof=1)

    def terms(clip: Clip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(standardized scale terms [T, L], standardized speed terms [T, 2], moving area [T])."""
        speed = speed_maps(model, clip)
        scales = standardized_terms(model, with_motion(clip.frames, cfg.input))[:, :-1]
        return scales, (speed_terms(model, speed, window) - mean) / std, moving_area(speed)

    held = [terms(c) for c in holdout]
    area = np.concatenate([h[2] for h in held])
    crowd = [spearman(np.concatenate([h[1][:, i] for h in held]), area) for i in range(2)]
    clips = load_clips(data, cfg.input, split="test")
    test = [terms(c) for c in tqdm(clips, desc="test")]
    rows = []
    for i, name in enumerate(("top-k cells (v8)", "object window")):

        def score(t: tuple[np.ndarray, np.ndarray, np.ndarray], i: int = i) -> np.ndarray:
            return np.concatenate([t[0], t[1][:, i : i + 1]], axis=1).mean(axis=1)

        calibration = calibrate(np.concatenate([score(h) for h in held]), cfg.train.false_alarm_rate)
        smoothed = [live_scores(score(t), calibration, cfg.train.smoothing_frames) for t in test]
        result = frame_aurocs([c.labels for c in clips], smoothed)  # type: ignore[arg-type]
        rows.append(
            {
                "checkpoint": checkpoint,
                "speed term": name,
                "crowd_rank_correlation": round(crowd[i], 4),
            }
            | {k: round(result[k], 4) for k in METRICS}
        )
    return {"window_cells": window, "blobs": blobs, "rows": rows}


def run(
    doc: str,
    analyse: Callable[[str, str], dict[str, Any]],
    model: str,
    script: str,
    kind: str,
) -> int:
    """The command line of an object-window comparison: `analyse` each checkpoint, write one report.

    `model` names the model in the title ("AnoMem"), `script` the file under benchmarks/, `kind`
    what the test-set run is ("an ablation", "a diagnostic").
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help=f"{model} checkpoints")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / f"{Path(script).stem}.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [analyse(c, args.data) for c in args.checkpoints]
    rows = [r for res in results for r in res["rows"]]
    report = {
        **environment(),
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "protocol": f"MODELS.md on all 2010 Ped2 test frames ({kind} on the test set, rule written before: "
        "benchmarks/README.md); calibration on the held-out clean training clips; crowd correlation: "
        "Spearman of the standardized speed term with the moving area on the held-out clips",
        "windows": [
            {"checkpoint": c, "window_cells": r["window_cells"], **r["blobs"]}
            for c, r in zip(args.checkpoints, results, strict=True)
        ],
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        f"{model}: the speed term over the fastest cells or one object's window (Ped2 test set; {kind})",
        ["checkpoint", "speed term", "crowd correlation", "causal micro", "paper micro", "macro"],
        [
            [
                Path(r["checkpoint"]).name,
                r["speed term"],
                f"{r['crowd_rank_correlation']:.3f}",
                *(f"{r[k]:.4f}" for k in METRICS),
            ]
            for r in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(__doc__ or "", analyse, "AnoMem", "anomem_object_speed.py", "an ablation"))
