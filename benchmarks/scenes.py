"""Two-scene development protocol: train and evaluate a config on UCSD Ped2 and on UCSD Ped1-dev.

For each scene and model (AnoMem, DAAD) the default config, or the config given with --set, is
trained on the scene's normal footage and scored on its test frames; the two trivial baselines are
measured on the same frames in the same run. Writes benchmarks/results/scenes.json and scenes.md.

Protocols:
- Ped2 (MODELS.md): train on train/ (16 clips), test on all 2010 frames of test/.
- Ped1-dev (its SOURCE.md): train on the normal runs (maximal runs of label 0, >= 10 frames) of clips
  01-05, each run its own clip; test on every frame of clips 06-09.
Both: causal pooled ("micro") frame AUROC of the scores the monitor thresholds (calibrated, then
the causal mean of the last `train.smoothing_frames`), the headline; the calibrated threshold's
false-alarm rate on the normal test frames and hit rate on the anomalous ones, raw and smoothed.

Baselines, no learning: the mean absolute difference with the previous frame, and the largest mean
absolute difference over the 8x8-pixel cells of the model's input frame; smoothed as the models are.

    python benchmarks/scenes.py --threads 2
    python benchmarks/scenes.py --models anomem --scenes ped1-dev --set model.topk=4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import REPO, RESULTS, environment, write_results

from model.config import ConfigError, ExperimentConfig, load_config
from model.data import Clip, load_clips, split_holdout
from model.evaluation import evaluate_clips
from model.metrics import causal_smooth, frame_aurocs
from model.pipeline import fingerprint, load_model, train_clips
from monitor.cli.model import parse_overrides

DATA = REPO.parent / "shared" / "data"
MODELS: dict[str, dict[str, Any]] = {"anomem": {}, "daad": {"model.name": "daad"}}
PED1_TRAIN_CLIPS = ("01", "02", "03", "04", "05")
PED1_TEST_CLIPS = ("06", "07", "08", "09")
PED1_MIN_RUN = 10


def ped2(root: Path, cfg: ExperimentConfig) -> tuple[list[Clip], list[Clip]]:
    """UCSD Ped2: its train/ clips, and its labelled test/ clips."""
    return load_clips(root, cfg.input, split="train"), load_clips(root, cfg.input, split="test")


def normal_runs(clip: Clip, min_frames: int) -> list[Clip]:
    """The maximal runs of normal frames (label 0) of a labelled clip, each `min_frames` long at least,
    as clips of their own (so motion pairs stay consecutive)."""
    assert clip.labels is not None
    runs, start = [], None
    for i, label in enumerate([*clip.labels.tolist(), 1]):
        if label == 0 and start is None:
            start = i
        elif label != 0 and start is not None:
            if i - start >= min_frames:
                runs.append(Clip(name=f"{clip.name}[{start}:{i}]", frames=clip.frames[start:i]))
            start = None
    return runs


def ped1_dev(root: Path, cfg: ExperimentConfig) -> tuple[list[Clip], list[Clip]]:
    """UCSD Ped1-dev (its SOURCE.md): the normal runs of clips 01-05, and clips 06-09."""
    clips = {c.name: c for c in load_clips(root, cfg.input, split="test")}
    train = [run for name in PED1_TRAIN_CLIPS for run in normal_runs(clips[name], PED1_MIN_RUN)]
    return train, [clips[name] for name in PED1_TEST_CLIPS]


SCENES: dict[str, tuple[Path, Callable[[Path, ExperimentConfig], tuple[list[Clip], list[Clip]]]]] = {
    "ped2": (DATA / "ucsd_ped2", ped2),
    "ped1-dev": (DATA / "ucsd_ped1_dev", ped1_dev),
}


def first_frames(clips: list[Clip], frames: int) -> list[Clip]:
    """The first `frames` frames of footage in its order (the last clip cut): what a new camera has
    recorded after frames / fps seconds."""
    out, left = [], frames
    for clip in clips:
        if left <= 0:
            break
        out.append(
            clip
            if len(clip.frames) <= left
            else Clip(name=f"{clip.name}[:{left}]", frames=clip.frames[:left])
        )
        left -= len(out[-1].frames)
    if left > 0:
        raise SystemExit(
            f"--footage-frames {frames}: the scene's training footage has only {frames - left} frames"
        )
    return out


def frame_difference(clip: Clip) -> dict[str, np.ndarray]:
    """The two baselines' scores of every frame: the mean |frame - previous| and its largest mean
    over 8x8-pixel cells (the first frame of a clip scores 0)."""
    return pair_difference(clip.frames, np.concatenate([clip.frames[:1], clip.frames[:-1]]))


def pair_difference(current: np.ndarray, previous: np.ndarray) -> dict[str, np.ndarray]:
    """The baselines' scores of frame pairs [T, C, H, W] each (`frame_difference`)."""
    diff = np.abs(current.astype(np.float32).mean(axis=1) - previous.astype(np.float32).mean(axis=1))
    t, h, w = diff.shape
    cells = diff[:, : h - h % 8, : w - w % 8].reshape(t, h // 8, 8, w // 8, 8).mean(axis=(2, 4))
    return {"frame-diff-mean": diff.mean(axis=(1, 2)), "frame-diff-max-cell": cells.max(axis=(1, 2))}


def baseline_rows(scene: str, test: list[Clip], smoothing: int) -> list[dict[str, Any]]:
    scores = [frame_difference(c) for c in test]
    labels = [c.labels for c in test if c.labels is not None]
    rows = []
    for name in scores[0]:
        raw = [s[name] for s in scores]
        rows.append(
            {
                "scene": scene,
                "model": name,
                **frame_aurocs(labels, [causal_smooth(r, smoothing) for r in raw]),
                "auroc_causal_micro_unsmoothed": frame_aurocs(labels, raw)["auroc_causal_micro"],
            }
        )
    return rows


def config_digest(cfg: ExperimentConfig, fit: list[Clip], holdout: list[Clip]) -> str:
    """Names a checkpoint by what it was trained from: the config, the footage and its split."""
    payload = (
        json.dumps(cfg.model_dump(mode="json"), sort_keys=True) + fingerprint(fit) + fingerprint(holdout)
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def trained_checkpoint(
    scene: str, model_name: str, cfg: ExperimentConfig, train: list[Clip], workdir: Path
) -> Path:
    """The checkpoint of `cfg` trained on a scene's normal footage: trained here unless the workdir
    holds a complete one of the same config, footage and split."""
    fit, holdout = split_holdout(train, cfg.train.holdout_fraction)
    ckpt = workdir / f"{scene}-{model_name}-{config_digest(cfg, fit, holdout)}.safetensors"
    if not ckpt.is_file() or not load_model(ckpt)[1].complete:
        train_clips(fit, holdout, ckpt, cfg, version=f"{scene}-{model_name}")
    return ckpt


def model_row(
    scene: str, model_name: str, cfg: ExperimentConfig, train: list[Clip], test: list[Clip], workdir: Path
) -> dict[str, Any]:
    """Train (or reuse the checkpoint of the same config and footage) and evaluate one model."""
    started = time.perf_counter()
    ckpt = trained_checkpoint(scene, model_name, cfg, train, workdir)
    model, meta = load_model(ckpt)
    train_seconds = time.perf_counter() - started
    result = evaluate_clips(
        model, meta.config, test, meta.config.train.smoothing_frames, calibration=meta.calibration
    )
    return {
        "scene": scene,
        "model": model_name,
        "checkpoint": str(ckpt),
        "train_frames": meta.training["train_frames"],
        "calibration_frames": meta.training["calibration_frames"],
        "train_seconds_recorded": round(float(meta.training["wall_seconds"]), 1),
        "train_seconds_this_run": round(train_seconds, 1),
        "object_window": getattr(meta.config.model, "object_window", None),
        **result,
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: causal micro per scene, their mean, and the margin over the better baseline."""
    scenes = sorted({r["scene"] for r in rows})
    best_baseline = {
        s: max(r["auroc_causal_micro"] for r in rows if r["scene"] == s and r["model"].startswith("frame-"))
        for s in scenes
    }
    out = []
    for model in dict.fromkeys(r["model"] for r in rows if not r["model"].startswith("frame-")):
        per = {r["scene"]: r["auroc_causal_micro"] for r in rows if r["model"] == model}
        out.append(
            {
                "model": model,
                **{f"{s}": per.get(s) for s in scenes},
                "mean": float(np.mean(list(per.values()))),
                **{f"{s} margin": per[s] - best_baseline[s] for s in scenes if s in per},
            }
        )
    return out


def _f(value: Any, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], means: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# Two scenes: UCSD Ped2 and UCSD Ped1-dev",
        "",
        f"Command: `{env['command']}` ({env['date']})  ",
        f"Machine: {env['machine']}, torch {env['torch']}, {env['threads']} threads. Config: "
        f"{env['overrides'] or 'the defaults'} (DAAD: `model.name=daad`, the rest default).",
        "",
        "Protocol: see `benchmarks/scenes.py` (Ped2: train/ vs all 2010 test frames; Ped1-dev: the normal "
        "runs of clips 01-05 vs every frame of clips 06-09). Causal micro = pooled frame AUROC of the "
        "calibrated scores smoothed over the current and previous frames, as the monitor thresholds them. "
        "FAR / hit = share of normal / anomalous test frames above the threshold calibrated at the "
        "requested false-alarm rate on held-out normal training footage (raw score; smoothed = the "
        "monitor's rule, smoothed calibrated score > 0.5). Baselines have no threshold.",
        "",
        "| scene | model | causal micro | unsmoothed | paper micro | macro | requested | FAR raw | hit raw "
        "| FAR smoothed | hit smoothed | train frames | held out |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scene']} | {r['model']} | {_f(r['auroc_causal_micro'], 4)} "
            f"| {_f(r['auroc_causal_micro_unsmoothed'], 4)} | {_f(r['auroc_paper_micro'], 4)} "
            f"| {_f(r['auroc_macro'], 4)} | {_f(r.get('requested_false_alarm_rate'), 2)} "
            f"| {_f(r.get('false_alarm_rate_raw'))} | {_f(r.get('hit_rate_raw'))} "
            f"| {_f(r.get('false_alarm_rate_smoothed'))} | {_f(r.get('hit_rate_smoothed'))} "
            f"| {r.get('train_frames', '')} | {r.get('calibration_frames', '')} |"
        )
    scenes = [k for k in means[0] if k not in ("model", "mean") and not k.endswith("margin")] if means else []
    lines += [
        "",
        "Causal micro AUROC per model, mean over the scenes, and margin over the better baseline:",
        "",
        "| model | " + " | ".join(scenes) + " | mean | " + " | ".join(f"{s} margin" for s in scenes) + " |",
        "|---|" + "---|" * (2 * len(scenes) + 1),
    ]
    for m in means:
        cells = [_f(m[s], 4) for s in scenes] + [_f(m["mean"], 4)]
        cells += [f"{m[f'{s} margin']:+.4f}" if f"{s} margin" in m else "" for s in scenes]
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=Path("runs/scenes"), help="checkpoints (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scenes", help="output path without suffix")
    parser.add_argument(
        "--footage-frames",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="train each model on only the first N frames of the scene's footage, one row per N (how "
        "accuracy grows with footage; e.g. --out benchmarks/results/footage)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as err:
        parser.error(str(err))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for scene in args.scenes:
        root, split = SCENES[scene]
        for model_name in args.models:
            cfg = load_config(None, {**MODELS[model_name], **overrides})
            train, test = split(root, cfg)
            if model_name == args.models[0]:
                rows += baseline_rows(scene, test, cfg.train.smoothing_frames)
            for frames in args.footage_frames or [None]:
                footage = train if frames is None else first_frames(train, frames)
                name = model_name if frames is None else f"{model_name} first {frames} frames"
                print(f"== {scene} {name}: {len(footage)} training clips, {len(test)} test clips", flush=True)
                rows.append(model_row(scene, model_name, cfg, footage, test, args.workdir))
                if frames is not None:
                    rows[-1].update(model=name, footage_frames=frames, footage_seconds=frames / cfg.input.fps)
                print(json.dumps(rows[-1], indent=1, default=str), flush=True)
                means = summary(rows)  # written after every model, so an interrupted run keeps its rows
                env = {**environment(), "overrides": overrides}
                write_results(args.out, env, rows, markdown(rows, means, env), summary=means)
    return 0


if __name__ == "__main__":
    sys.exit(main())
