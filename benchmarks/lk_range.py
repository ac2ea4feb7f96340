"""The speeds the in-graph Lucas-Kanade estimate (model/motion.py) can measure, and Ped2's speeds.

1. Known shifts: a Ped2 training frame at the model's input size (160x240, grey) is shifted
   sideways by d pixels (sub-pixel, bilinear) and the speed of the pair is read with the model's
   `pyramid_speed` (15 px window) at 1, 2 and 3 levels (`model.flow_levels`; 1 = the plain
   `lucas_kanade_speed`); the median over the frame (20 px border left out) against d.
2. What Ped2 needs: OpenCV's pyramidal Farneback flow (not in the graph) on every third frame pair
   at the same size, over moving pixels (|difference| > 15 grey levels, dilated 5x5): speed
   percentiles of the training clips, and of the test frames inside and outside the anomaly masks
   (the masks say where to look; nothing is scored or fitted).

    python benchmarks/lk_range.py --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from results_io import environment, write_report
from tqdm import tqdm

from model.motion import pyramid_speed, sobel_kernels

RESULTS = Path(__file__).parent / "results"
SIZE = (240, 160)  # (width, height): AnoMem's Ped2 input
SHIFTS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0]
BORDER = 20
LEVELS = (1, 2, 3)


def _grey(path: Path) -> np.ndarray:
    return cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), SIZE, interpolation=cv2.INTER_AREA)


def known_shifts(frame: np.ndarray, window: int) -> list[dict[str, float]]:
    image = frame.astype(np.float32) / 255.0
    sobel = sobel_kernels()
    rows = []
    for d in SHIFTS:
        shifted = cv2.warpAffine(
            image,
            np.float32([[1, 0, d], [0, 1, 0]]),
            SIZE,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        row: dict[str, float] = {"shift_px": d}
        for levels in LEVELS:
            speed = pyramid_speed(
                torch.from_numpy(shifted)[None, None],
                torch.from_numpy(image)[None, None],
                sobel,
                window,
                levels,
            )[0, 0].numpy()[BORDER:-BORDER, BORDER:-BORDER]
            row[f"levels_{levels}_median_px"] = round(float(np.median(speed)), 2)
        rows.append(row)
    return rows


def farneback_speeds(
    clip: Path, masks: Path | None, step: int = 3
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    files = sorted(clip.glob("*.jpg")) or sorted(clip.glob("*.tif"))
    mask_files = sorted(masks.glob("*.png")) if masks is not None else []
    inside, outside = [], []
    for i in range(1, len(files), step):
        a, b = _grey(files[i - 1]), _grey(files[i])
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        speed = np.hypot(flow[..., 0], flow[..., 1])
        moving = cv2.dilate((cv2.absdiff(a, b) > 15).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if mask_files:
            mask = (
                cv2.resize(
                    cv2.imread(str(mask_files[i]), cv2.IMREAD_GRAYSCALE),
                    SIZE,
                    interpolation=cv2.INTER_NEAREST,
                )
                > 127
            )
            inside.append(speed[moving & mask])
            outside.append(speed[moving & ~mask])
        else:
            outside.append(speed[moving])
    return inside, outside


def percentiles(values: list[np.ndarray]) -> dict[str, float]:
    v = np.concatenate(values)
    return {f"p{q}": round(float(np.percentile(v, q)), 2) for q in (50, 90, 99)} | {"pixels": len(v)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--window", type=int, default=15, help="Lucas-Kanade window (AnoMem: 15)")
    parser.add_argument("--out", default=str(RESULTS / "lk_range.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data)
    shifts = known_shifts(_grey(root / "train" / "01" / "050.jpg"), args.window)
    train: list[np.ndarray] = []
    for clip in tqdm(sorted((root / "train").iterdir()), desc="train clips"):
        train += farneback_speeds(clip, None)[1]
    inside: list[np.ndarray] = []
    outside: list[np.ndarray] = []
    for clip in tqdm(sorted((root / "test").iterdir()), desc="test clips"):
        i, o = farneback_speeds(clip, root / "masks" / clip.name)
        inside += i
        outside += o
    ped2: dict[str, Any] = {
        "train moving pixels": percentiles(train),
        "test moving pixels outside the anomaly masks": percentiles(outside),
        "test moving pixels inside the anomaly masks": percentiles(inside),
    }
    report = {
        **environment(),
        "known_shifts": shifts,
        "ped2_farneback_px_per_frame": ped2,
    }
    cells = [
        [f"{r['shift_px']:g} px shift", " / ".join(f"{r[f'levels_{n}_median_px']:.2f}" for n in LEVELS), ""]
        for r in shifts
    ]
    cells += [
        [name, f"p50 {p['p50']:.2f} / p90 {p['p90']:.2f} / p99 {p['p99']:.2f} px", str(p["pixels"])]
        for name, p in ped2.items()
    ]
    write_report(
        args.out,
        report,
        "What the in-graph Lucas-Kanade speed can measure (160x240), and Ped2's speeds",
        ["input", "speed read, px per frame (known shifts: flow_levels 1 / 2 / 3)", "pixels"],
        cells,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
