"""How well a speed estimate alone ranks Ped2's test frames, with no model (a test-set diagnostic).

Each motion cue is computed from a test frame and its predecessor at AnoMem's input size (160x240,
grey), averaged over 8x8-pixel cells; a frame's score is the mean of its k fastest cells, causally
smoothed over 8 frames and pooled over all clips (the headline protocol of MODELS.md). Nothing is
trained or fitted: this measures the motion input the models see, on the test labels, and is
reported as such (it is what motivated `lk`), not a tuning result.

- normal flow: sum|dI/dt| / sum|grad I| per cell (`motion_features: flow`, the earlier default);
- Lucas-Kanade: the least-squares flow over a 15x15 window (`motion_features: lk`, model/motion.py);
- Farneback: OpenCV's dense optical flow (pyramidal, on the CPU outside the graph; for comparison).

    python benchmarks/motion_cues.py --data ../shared/data/ucsd_ped2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from report import write_report
from tqdm import tqdm

from model.config import InputSpec
from model.data import load_clips
from model.metrics import causal_smooth, frame_aurocs
from model.motion import lucas_kanade_speed, normal_flow_field, sobel_kernels

RESULTS = Path(__file__).parent / "results"
SIZE = (160, 240)
CELL = 8
TOPK = (4, 16, 32)
SMOOTHING = 8


def _pair(frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(frames).float() / 255.0
    previous = torch.cat([x[:1], x[:-1]])
    return x, previous


def normal_flow(frames: np.ndarray) -> torch.Tensor:
    """sum|dI/dt| / sum|grad I| per cell, as `motion_features: flow` computes it."""
    field = normal_flow_field(*_pair(frames), sobel_kernels())
    return F.avg_pool2d(field[:, :1], CELL) / (F.avg_pool2d(field[:, 1:], CELL) + 0.01)


def lucas_kanade(frames: np.ndarray) -> torch.Tensor:
    x, previous = _pair(frames)
    return F.avg_pool2d(lucas_kanade_speed(x, previous, sobel_kernels(), 15), CELL)


def farneback(frames: np.ndarray) -> torch.Tensor:
    cells = []
    for i in range(len(frames)):
        flow = cv2.calcOpticalFlowFarneback(
            frames[max(0, i - 1)][0], frames[i][0], None, 0.5, 3, 15, 3, 5, 1.2, 0
        )
        speed = torch.from_numpy(np.sqrt((flow**2).sum(-1)))[None, None]
        cells.append(F.avg_pool2d(speed, CELL))
    return torch.cat(cells)


CUES: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
    "normal flow (flow)": normal_flow,
    "Lucas-Kanade, 15 px window (lk)": lucas_kanade,
    "Farneback (OpenCV, outside the graph)": farneback,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "motion_cues.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = load_clips(args.data, InputSpec(height=SIZE[0], width=SIZE[1], motion=False), split="test")
    labels = [c.labels for c in clips if c.labels is not None]
    if len(labels) != len(clips):
        raise SystemExit("motion_cues: every test clip needs labels (a Ped2 root)")
    frames = sum(len(c.frames) for c in clips)
    rows: list[dict[str, Any]] = []
    for name, cue in CUES.items():
        started = time.perf_counter()
        cells = [cue(c.frames).flatten(1).numpy() for c in tqdm(clips, desc=name, unit="clip")]
        ms = (time.perf_counter() - started) / frames * 1000
        row: dict[str, Any] = {"cue": name, "ms_per_frame": round(ms, 2)}
        for k in TOPK:
            scores = [causal_smooth(np.sort(c, axis=1)[:, -k:].mean(axis=1), SMOOTHING) for c in cells]
            row[f"top{k}"] = round(frame_aurocs(labels, scores)["auroc_causal_micro"], 4)  # type: ignore[arg-type]
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = f"python benchmarks/motion_cues.py --data {args.data} --threads {args.threads}"
    report = {
        "command": command,
        "protocol": f"Ped2 test (2010 frames) at {SIZE[0]}x{SIZE[1]}, {CELL}x{CELL} cells, top-k mean, "
        f"causal mean over {SMOOTHING} frames, pooled (causal micro AUROC); a test-set diagnostic",
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        "A speed cue alone on Ped2 (causal micro AUROC; a test-set diagnostic, no model)",
        ["cue", *(f"top-{k} cells" for k in TOPK), "ms/frame"],
        [[r["cue"], *(f"{r[f'top{k}']:.3f}" for k in TOPK), str(r["ms_per_frame"])] for r in rows],
    )


if __name__ == "__main__":
    main()
