"""Train and evaluate DAAD on UCSD Ped2: the block-size sweep and the adversarial ablation.

Writes benchmarks/results/ped2_daad.json and ped2_daad.md. Every variant starts from
benchmarks/configs/daad_ped2.yaml, is trained on Ped2's train/ split only and evaluated on all 2010
test frames with the protocol of MODELS.md. For each variant the table also gives the mean
reconstruction error of normal and anomalous test frames (the paper's granularity argument: the best
block size maximizes their gap), the AUROC of each score term alone, and a label-free pseudo-anomaly
AUROC on the held-out training clips (`pseudo_aurocs`), which picks the block size of the committed
checkpoint without test labels (averaged over networks trained with two seeds, two kinds of
synthetic event and three event seeds each). It picks block 16 with two seeds and block 8 with three
(`--pick-seeds 0 1 2`): it does not separate the sizes (docs/experiments.md). The adversarial
ablation is run at that block size and at the a-priori one (32), and so is the score
without its speed term (the same networks rescored).

    python benchmarks/ped2_daad.py --data ../shared/data/ucsd_ped2 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ped2_anomem import median_fps
from results_io import DAAD_ARTIFACT, environment, write_results

from model.anomaly_map import topk_mean
from model.calibration import calibrate
from model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from model.config import DAADConfig, ExperimentConfig, InputSpec, load_config
from model.daad.model import DAAD
from model.daad.train import fit_normal_stats
from model.data import Clip, load_clips, with_motion
from model.evaluation import evaluate_clips, live_scores
from model.metrics import auroc, frame_aurocs
from model.pipeline import (
    build_model,
    calibrate_on,
    load_model,
    model_inputs,
    score_inputs,
    split_holdout,
    train,
)
from model.pseudo_anomaly import event_for_whole_clip

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "daad_ped2.yaml"
NO_ADVERSARIAL = {
    "train.daad.w_adversarial": 0.0,
    "train.daad.w_feature_matching": 0.0,
    "model.latent_weight": 0.0,
}
BLOCKS = (8, 16, 32, 64)  # the granularity sweep: one block footprint (input pixels) at every memory stage
NO_SPEED = {"model.speed_weight": 0.0}
PSEUDO_SEEDS = (0, 1, 2)  # synthetic event sets per kind in a variant's pseudo-anomaly AUROC
KINDS = ("fast-patches", "foreign-objects")  # the synthetic events of the pseudo-anomaly AUROC
OBJECTS = "../shared/data/cifar10/cifar10_jpg.zip"  # the foreign objects' photographs
A_PRIORI_BLOCK = 32  # MODELS.md's suggestion: 8x8 blocks at stride 4 ... 1x1 at stride 32
# Model fields that change the score only, not the trained network (flow_window, the speed term's
# window, also sets the motion channel's dropped edges, so it shapes the network too).
SCORE_FIELDS = {"speed_weight", "speed_topk"}


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


def pseudo_aurocs(
    model: torch.nn.Module, meta: CheckpointMeta, train_clips: list[Clip], objects: np.ndarray
) -> dict[str, float | dict[str, float]]:
    """The label-free validation: AUROCs of a model on its held-out clips (of `train_clips`, the split
    it trained on) with synthetic events pasted in, one per (kind, seed) of KINDS x PSEUDO_SEEDS.

    - fast-patches: scene patches moving much faster than anything in normal footage;
    - foreign-objects: grey CIFAR-10 test photographs (`objects`) at a person's height crossing the
      scene from standing still up to a few times walking pace.

    Each held-out segment is scored as it is (normal) and again with an event for its whole length
    (the segments are about 20 frames, `split_holdout`), as the live monitor smooths (calibrated,
    then a causal mean); `pseudo_auroc` is the mean over the sets, `sets` each one.
    """
    cfg = meta.config
    _, holdout = split_holdout(train_clips, cfg.train.holdout_fraction)

    def live(frames: np.ndarray, desc: str) -> np.ndarray:
        scores, _ = score_inputs(model, with_motion(frames, cfg.input), desc=desc)
        return live_scores(scores, meta.calibration, cfg.train.smoothing_frames)

    clean = np.concatenate([live(clip.frames, f"normal {clip.name}") for clip in holdout])
    sets: dict[str, float] = {}
    for kind in KINDS:
        for seed in PSEUDO_SEEDS:
            rng = np.random.default_rng(seed)
            events = []
            for clip in holdout:
                frames = event_for_whole_clip(clip.frames, rng, kind, objects)
                events.append(live(frames, f"{kind} {seed} {clip.name}"))
            y = np.concatenate([np.zeros(len(clean)), np.ones(sum(len(e) for e in events))])
            sets[f"{kind} seed {seed}"] = auroc(y, np.concatenate([clean, *events]))
    return {"pseudo_auroc": float(np.mean(list(sets.values()))), "sets": sets}


@functools.cache
def ped2_clips(data: str, spec: InputSpec, split: str) -> list[Clip]:
    """One split of Ped2 at one input size, read once per run (every variant shares the size)."""
    return load_clips(data, spec, split=split)


@torch.no_grad()
def frame_terms(model: DAAD, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame mean error and score terms of one clip's model inputs (terms normalized as scored),
    and two latent distances the score does not use (`raw`, `pooled`) for comparison."""
    out: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("error", "reconstruction", "latent", "raw", "pooled", "speed")
    }
    for start in range(0, len(inputs), 32):
        terms, _, rec = model.terms(torch.from_numpy(inputs[start : start + 32]))
        for name, term in terms.items():
            out[name].append(term)
        out["error"].append(model.error_cells(rec).mean(dim=(1, 2, 3)))
        if model.cfg.latent_topk is not None:
            out["raw"].append(topk_mean(model.latent_cells(rec), model.cfg.latent_topk))
        real, fake = (model.discriminator.features(x) for x in (rec.target, rec.output))
        out["pooled"].append((real - fake).pow(2).sum(dim=1))
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


@torch.no_grad()
def reconstruction_terms(model: DAAD, cfg: ExperimentConfig, data: str) -> dict[str, Any]:
    """Mean reconstruction error of normal and anomalous test frames, and each score term's AUROC.

    Each term alone is calibrated on the held-out training clips (as training calibrates the score)
    and smoothed as the live monitor smooths the score, so its AUROC compares with the score's.
    """
    clips = ped2_clips(data, cfg.input, "test")
    test = [frame_terms(model, with_motion(c.frames, cfg.input)) for c in clips]
    _, holdout = split_holdout(ped2_clips(data, cfg.input, "train"), cfg.train.holdout_fraction)
    held = [frame_terms(model, with_motion(c.frames, cfg.input)) for c in holdout]
    labels = [c.labels for c in clips]
    y, err = np.concatenate(labels), np.concatenate([t["error"] for t in test])
    normal, anomalous = float(err[y == 0].mean()), float(err[y == 1].mean())

    def term_auroc(key: str) -> float | None:
        if key not in test[0]:
            return None
        calibration = calibrate(np.concatenate([h[key] for h in held]), cfg.train.false_alarm_rate)
        live = [live_scores(t[key], calibration, cfg.train.smoothing_frames) for t in test]
        return frame_aurocs(labels, live)["auroc_causal_micro"]

    # Without a latent term in the score the discriminator is left untrained: nothing to report.
    latent = model.cfg.latent_weight > 0
    return {
        "recon_error_normal": normal,
        "recon_error_anomalous": anomalous,
        "recon_error_ratio": anomalous / normal,
        "recon_error_auroc": auroc(y, err),
        "auroc_reconstruction_term": term_auroc("reconstruction"),
        "auroc_latent_term": term_auroc("latent") if latent else None,
        # The top-k of the raw per-cell distances (not standardized per cell), for comparison.
        "auroc_latent_raw_cells": term_auroc("raw") if latent else None,
        # The distance of spatially pooled features (latent_topk: None), for comparison.
        "auroc_latent_pooled_features": term_auroc("pooled") if latent else None,
        "auroc_speed_term": term_auroc("speed"),
    }


def same_network(trained: ExperimentConfig, cfg: ExperimentConfig) -> bool:
    """Whether `cfg` differs from a checkpoint's config in score fields only (see SCORE_FIELDS)."""
    a, b = trained.model, cfg.model
    if not isinstance(a, DAADConfig) or not isinstance(b, DAADConfig):
        return False
    strip = dict.fromkeys(SCORE_FIELDS)
    return trained.model_copy(update={"model": a.model_copy(update=strip)}) == cfg.model_copy(
        update={"model": b.model_copy(update=strip)}
    )


def rescore(source: Path, cfg: ExperimentConfig, data: str, out: Path) -> None:
    """Give a trained network another score config: refit its normal statistics on the training
    frames and its calibration on the held-out clips, as training does, and write it to `out`."""
    tensors, meta = load_checkpoint(source)
    model = build_model(cfg, load_pretrained=False)
    assert isinstance(model, DAAD)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if set(unexpected) - {"speed_stats"} or set(missing) - {"speed_stats"}:
        raise ValueError(f"{source}: not the network of this config ({missing} {unexpected})")
    fit, holdout = split_holdout(ped2_clips(data, cfg.input, "train"), cfg.train.holdout_fraction)
    fit_normal_stats(model, model_inputs(fit, cfg))
    calibration, map_calibration = calibrate_on(model, holdout, cfg, cfg.train.false_alarm_rate)
    update = {"config": cfg, "calibration": calibration, "map_calibration": map_calibration}
    save_checkpoint(out, model.state_dict(), meta.model_copy(update=update))


def run_variant(
    name: str,
    overrides: dict[str, Any],
    data: str,
    workdir: Path,
    objects: np.ndarray,
    source: str | None = None,
) -> dict[str, Any]:
    """Train (or reuse) one variant and measure it; `source`: rescore that variant's network instead.

    Its pseudo-anomaly AUROC is the mean over both event kinds and PSEUDO_SEEDS (label-free)."""
    ckpt = workdir / f"{name}.safetensors"
    cfg = load_config(CONFIG, overrides)
    started = time.perf_counter()
    model, meta = load_model(ckpt) if ckpt.is_file() else (None, None)
    current = meta is not None and meta.complete and meta.config == cfg
    if not current and (source is not None or (meta is not None and same_network(meta.config, cfg))):
        # The trained network (this variant's or `source`'s), scored as `cfg` says.
        rescore(workdir / f"{source}.safetensors" if source else ckpt, cfg, data, ckpt)
        model, meta = load_model(ckpt)
    if model is None or meta is None or not meta.complete or meta.config != cfg:
        train(data, ckpt, cfg, version=f"ped2-daad-{name}")
        model, meta = load_model(ckpt)
    train_seconds = time.perf_counter() - started
    assert isinstance(model, DAAD)
    test = ped2_clips(data, cfg.input, "test")  # meta.config == cfg here
    result = evaluate_clips(model, cfg, test, cfg.train.smoothing_frames, calibration=meta.calibration)
    spec = cfg.input
    pseudo = pseudo_aurocs(model, meta, ped2_clips(data, spec, "train"), objects)
    return {
        "variant": name,
        "fps_median_b32": round(median_fps(model, spec.channels, spec.height, spec.width), 1),
        "overrides": overrides,
        "blocks": {f"stride {2**s}": b for s, b in model.blocks.items()},
        "checkpoint": str(ckpt),
        "checkpoint_mb": round(ckpt.stat().st_size / 2**20, 2),
        "rescored_from": source,
        "train_seconds_recorded": round(float(meta.training["wall_seconds"]), 1),
        "train_threads": meta.training["threads"],
        "train_seconds_this_run": round(train_seconds, 1),
        "pseudo_auroc": pseudo["pseudo_auroc"],
        "pseudo_auroc_sets": pseudo["sets"],
        **result,
        **reconstruction_terms(model, cfg, data),
    }


def sweep_name(block: int, seed: int) -> str:
    """A sweep network's variant name: `block-B` for training seed 0, `block-B-seed-S` otherwise."""
    return f"block-{block}" if seed == 0 else f"block-{block}-seed-{seed}"


def sweep_overrides(block: int, seed: int) -> dict[str, Any]:
    return {"model.block_size": block, **({"train.seed": seed} if seed else {})}


def _train_cell(row: dict[str, Any]) -> str:
    if row.get("rescored_from"):
        return f"(the {row['rescored_from']} network)"
    return f"{row['train_seconds_recorded']} ({row['train_threads']})"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _kind_mean(row: dict[str, Any], kind: str) -> float:
    return float(np.mean([v for k, v in row["pseudo_auroc_sets"].items() if k.startswith(kind)]))


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], chosen: str, pick: dict[int, float]) -> str:
    head = (
        "| variant | causal micro AUROC | (unsmoothed) | paper micro AUROC | macro AUROC | pixel AUROC "
        "| scoring fps | train s (threads) |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['variant']} | {r['auroc_causal_micro']:.4f} | {r['auroc_causal_micro_unsmoothed']:.4f} "
        f"| {r['auroc_paper_micro']:.4f} | {r['auroc_macro']:.4f} | {r['pixel_auroc']:.4f} "
        f"| {r['fps_median_b32']:.1f} | {_train_cell(r)} |"
        for r in rows
    ]
    sweep_head = (
        "| variant | blocks per stride | recon error normal | recon error anomalous | ratio "
        "| recon error AUROC | reconstruction term AUROC | latent term AUROC | (raw cells) "
        "| (pooled features) | speed term AUROC | pseudo-anomaly AUROC | (fast patches) "
        "| (foreign objects) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    sweep = [
        f"| {r['variant']} | {', '.join(f'{k.split()[1]}: {v}' for k, v in r['blocks'].items())} "
        f"| {r['recon_error_normal']:.5f} | {r['recon_error_anomalous']:.5f} | {r['recon_error_ratio']:.3f} "
        f"| {r['recon_error_auroc']:.4f} | {r['auroc_reconstruction_term']:.4f} "
        f"| {_fmt(r['auroc_latent_term'])} | {_fmt(r.get('auroc_latent_raw_cells'))} "
        f"| {_fmt(r['auroc_latent_pooled_features'])} | {_fmt(r['auroc_speed_term'])} "
        f"| {r['pseudo_auroc']:.4f} | {_kind_mean(r, KINDS[0]):.4f} | {_kind_mean(r, KINDS[1]):.4f} |"
        for r in rows
    ]
    protocol = (
        "Protocol (MODELS.md): train on train/ only (2 of 16 clips held out for calibration); all 2010 "
        "test frames. Causal micro = pooled AUROC of the scores the live monitor thresholds: each frame's "
        "score calibrated to [0, 1] (the checkpoint's calibration, fitted on the held-out clips) and then "
        f"averaged with the previous {rows[0]['smoothing_frames'] - 1} (the headline). Unsmoothed = the raw "
        "scores with no smoothing. Paper micro = per-video min-max of the same smoothed scores, pooled (the "
        "published protocol). Macro = mean per-clip AUROC over clips with both classes. Pixel AUROC = "
        "anomaly maps vs masks/ at half resolution (120x180), pooled over all test frames. Scoring fps = "
        "model forward (PyTorch eager, CPU), median over 15 batches of 32 after warm-up. Train s = wall "
        "time of `anomon train` (training, normal statistics, calibration) on this CPU, with the torch "
        "threads it ran with (the machine was shared with other jobs: train times are indicative)."
    )
    terms = (
        "Recon error = mean per-pixel squared error of a frame (frame channel + weighted motion channel, "
        "the training objective), averaged over the normal and over the anomalous test frames; ratio = "
        "anomalous / normal; recon error AUROC = that per-frame error as a score (unsmoothed). Term AUROCs = "
        "causal micro AUROC of each normalized score term alone (the score is their weighted sum), "
        "calibrated on the held-out clips and smoothed as the score is; "
        "the latent term standardizes each cell of the discriminator's penultimate map with its normal "
        "mean and std before its top-k; (raw cells) = the same top-k without that standardization (the "
        "latent term before `latent_stats`), (pooled features) = the latent distance of the spatially "
        "averaged discriminator features instead of the top-k of per-cell distances, both from the same "
        "weights. The speed term = the mean Lucas-Kanade speed of the fastest map cells, standardized over "
        "the normal training frames (no network involved). Rows `-no-speed-term` rescore a variant's own "
        "network without it (normal statistics and calibration refitted as training fits them). "
        "Pseudo-anomaly AUROC = AUROC (smoothed as the monitor does) on the 2 held-out training clips "
        "with synthetic events pasted in (label-free), the mean over "
        f"{len(PSEUDO_SEEDS)} seeds of each of two kinds: fast-moving scene patches and foreign objects "
        "(grey CIFAR-10 test photographs crossing the scene at up to a few times walking pace)."
    )
    rule = (
        "Block-size rule (label-free): the block size whose networks (one per training seed; the "
        "`block-B-seed-S` rows, seed 0 is `block-B`) have the highest mean pseudo-anomaly AUROC: "
        + ", ".join(f"{b}: {v:.4f}" for b, v in pick.items())
        + f". Committed: `{chosen}`."
    )
    return (
        "# DAAD on UCSD Ped2\n\n"
        f"Command: `{env['command']}`  \n"
        f"Machine: {env['machine']}, torch {env['torch']}, {env['threads']} threads.  \n"
        f"Base config: `benchmarks/configs/daad_ped2.yaml`; committed checkpoint: the `{chosen}` variant.\n\n"
        f"{protocol}\n\n{head}" + "\n".join(lines) + "\n\n"
        "## Granularity sweep and score terms\n\n"
        f"{terms}\n\n{rule}\n\n{sweep_head}" + "\n".join(sweep) + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="UCSD Ped2 root")
    parser.add_argument(
        "--workdir", default="runs/ped2_daad", help="where checkpoints are written (reused if complete)"
    )
    parser.add_argument(
        "--out", default=str(ROOT / "results" / "ped2_daad"), help="output path without suffix"
    )
    parser.add_argument("--blocks", nargs="*", type=int, default=list(BLOCKS), help="block sizes to sweep")
    parser.add_argument(
        "--pick-seeds",
        nargs="+",
        type=int,
        default=[0, 1],
        help="training seeds of the networks whose pseudo-anomaly AUROCs the block-size rule averages",
    )
    parser.add_argument("--objects", default=OBJECTS, help="CIFAR-10 JPEG zip (the foreign objects)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--default",
        type=int,
        help="block size of the committed checkpoint (default: the block size whose networks have the "
        "best mean label-free pseudo-anomaly AUROC)",
    )
    parser.add_argument(
        "--artifact",
        default=str(DAAD_ARTIFACT),
        help="copy the default variant's checkpoint here",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []

    objects = load_objects(args.objects)

    def run(name: str, overrides: dict[str, Any], source: str | None = None) -> dict[str, Any]:
        print(f"== {name}", flush=True)
        rows.append(run_variant(name, overrides, args.data, workdir, objects, source))
        print(json.dumps(rows[-1], indent=1), flush=True)
        return rows[-1]

    # The block-size rule: the mean pseudo-anomaly AUROC of the networks trained with each pick seed
    # (seed 0 is the `block-B` variant, the one committed when B is picked).
    pick = {
        b: float(
            np.mean([run(sweep_name(b, s), sweep_overrides(b, s))["pseudo_auroc"] for s in args.pick_seeds])
        )
        for b in args.blocks
    }
    chosen = args.default or max(pick, key=lambda b: pick[b])
    # The adversarial ablation (no GAN or feature-matching loss, no latent term in the score) of the
    # committed configuration and of the a-priori block size.
    for b in dict.fromkeys([chosen, A_PRIORI_BLOCK]):
        run(f"block-{b}-no-adversarial", {"model.block_size": b, **NO_ADVERSARIAL})
    # The score without the speed term (the score: reconstruction + latent), same networks.
    for b in dict.fromkeys([chosen, A_PRIORI_BLOCK]):
        run(f"block-{b}-no-speed-term", {"model.block_size": b, **NO_SPEED}, source=f"block-{b}")
    Path(args.artifact).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workdir / f"block-{chosen}.safetensors", args.artifact)
    env = environment(args.artifact)
    write_results(args.out, env, rows, markdown(rows, env, f"block-{chosen}", pick), pick=pick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
