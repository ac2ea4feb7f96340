"""Label-free criterion: rank AnoMem's score settings on normal footage alone (issue 30 part 2).

The protocol is in docs/evaluation.md, "Label-free criterion", written before any test number was
looked at. Per scene, one AnoMem network is trained with the default config on the scene's normal
footage (the checkpoint `benchmarks/scenes.py` makes and reuses). Each variant (VARIANTS) is a score
setting of that network: its terms, its top-k, the speed term's window, the smoothing. For each, the
script refits the term statistics on the training frames, the threshold on the held-out frames, and
then measures:

- the criterion: the causal AUROC of the held-out normal segments against the same segments with a
  synthetic event for their whole length (fast scene patches, CIFAR-10 objects, 3x speed, and the
  scene's own walkers at 2-4x their speed), the mean over the four kinds;
- the causal micro AUROC on the scene's labelled test frames (the scenes.py protocol), and the
  false-alarm rate there at the calibrated threshold.

It reports, per scene, the Spearman rank correlation of the two over the variants (how far the
criterion can be trusted on a camera nobody labelled) and the variant the criterion picks. The test
labels serve only that correlation.

    python benchmarks/criterion.py --threads 2
    python benchmarks/criterion.py --scenes ped1-dev --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ped2_daad import load_objects
from results_io import RESULTS, environment, write_results
from scenes import DATA, SCENES, pair_difference, trained_checkpoint
from tqdm import tqdm

from model.anomaly_map import topk_mean
from model.anomem.model import AnoMem, _pool_motion
from model.anomem.train import MOVING_SPEED
from model.calibration import Calibration, calibrate
from model.config import ConfigError, ExperimentConfig, load_config
from model.data import Clip, split_holdout, with_motion
from model.evaluation import operating_point
from model.metrics import auroc, causal_smooth, frame_aurocs
from model.pipeline import load_model, model_inputs, score_inputs
from model.pseudo_anomaly import EVENT_KINDS, event_for_whole_clip
from monitor.cli.model import parse_overrides

KINDS = (*EVENT_KINDS, "faster-3x", "fast-walkers")
DRAWS = 4  # synthetic events drawn per held-out segment, for the two drawn kinds
LAG = 3  # faster-3x: each frame is paired with the one LAG frames before it
OBJECTS = DATA / "cifar10" / "cifar10_jpg.zip"  # the foreign objects' photographs


@dataclass(frozen=True)
class Variant:
    """A score setting of a trained AnoMem network."""

    name: str
    topk: int = 8
    scales: tuple[int, ...] = (0, 1, 2)  # indices into the network's scales
    speed: float = 1.0  # weight of the speed term relative to one scale's; 0: off
    window: tuple[int, int] | None = None  # the speed term's window in stride-8 cells; None: measured
    smoothing: int = 8
    per_row_speed: bool = False  # speed in units of the normal moving speed on its image row


VARIANTS = (
    Variant("default"),
    Variant("topk 2", topk=2),
    Variant("topk 32", topk=32),
    Variant("no speed term", speed=0.0),
    Variant("speed term only", scales=()),
    Variant("finest scale + speed", scales=(0,)),
    Variant("coarsest scale + speed", scales=(2,)),
    Variant("speed at double weight", speed=2.0),
    Variant("speed window 1x1", window=(1, 1)),
    Variant("speed window 4x4", window=(4, 4)),
    Variant("smoothing 1", smoothing=1),
    Variant("smoothing 16", smoothing=16),
    Variant("speed per image row", per_row_speed=True),
)
# Besides AnoMem's score settings, the criterion ranks scorers of other kinds on the same frames.
OTHERS = ("svdd detector", "daad default", "frame-diff-mean", "frame-diff-max-cell")
ROW_QUANTILE = 0.9  # per_row_speed: a row's normal moving speed is this quantile of its moving cells
MIN_ROW_CELLS = 50  # ... over at least this many moving cells; rows with fewer take the global value


@dataclass
class Ingredients:
    """What every variant's score is made of, for a set of clips: the standardized deviation maps
    per scale and the per-cell speed on the stride-8 grid, with each clip's frame range."""

    maps: list[torch.Tensor]  # [N, 1, h_l, w_l] per used scale
    speed: torch.Tensor  # [N, 1, h0, w0]
    lengths: list[int]

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        return np.split(values, np.cumsum(self.lengths)[:-1])


@torch.no_grad()
def ingredients(model: AnoMem, inputs: list[np.ndarray], desc: str, batch_size: int = 32) -> Ingredients:
    """The `Ingredients` of per-clip model inputs (frames already paired)."""
    model.eval()
    stacked = np.concatenate(inputs)
    maps: list[list[torch.Tensor]] = [[] for _ in model.scales]
    speed = []
    for start in tqdm(range(0, len(stacked), batch_size), desc=desc, unit="batch", leave=False):
        current, motion = model.split_input(torch.from_numpy(stacked[start : start + batch_size]))
        assert motion is not None, "the criterion's variants need a model with motion input"
        for i, d in enumerate(model.deviations(current, motion)):
            maps[i].append(d)
        speed.append(_pool_motion(motion, model.map_size)[:, 1:])
    return Ingredients([torch.cat(m) for m in maps], torch.cat(speed), [len(x) for x in inputs])


def row_speed_scale(speed: torch.Tensor) -> torch.Tensor:
    """Per image row of the stride-8 grid [1, 1, h0, 1]: the normal moving speed there (ROW_QUANTILE of
    the cells moving faster than MOVING_SPEED), relative to the same over all rows. Perspective makes
    near walkers fast and far ones slow in pixels; in these units each row's walkers read about 1."""
    cells = speed[:, 0].permute(1, 0, 2).reshape(speed.shape[2], -1)  # [h0, N * w0]
    moving = cells > MOVING_SPEED
    overall = float(torch.quantile(cells[moving], ROW_QUANTILE)) if moving.any() else 1.0
    rows = [
        float(torch.quantile(row[m], ROW_QUANTILE)) if int(m.sum()) >= MIN_ROW_CELLS else overall
        for row, m in zip(cells, moving, strict=True)
    ]
    return (torch.tensor(rows) / overall).clamp(min=0.25).view(1, 1, -1, 1)


def terms(model: AnoMem, ing: Ingredients, variant: Variant, rows: torch.Tensor | None = None) -> np.ndarray:
    """The variant's unstandardized score terms [N, T], as `AnoMem.score_terms` makes them (`rows`:
    the `row_speed_scale` the speed is divided by)."""
    out = [topk_mean(ing.maps[i], variant.topk * 4 ** (2 - model.scales[i])) for i in variant.scales]
    if variant.speed > 0:
        h, w = variant.window or model.object_window
        window = (min(h, model.map_size[0]), min(w, model.map_size[1]))
        speed = ing.speed if rows is None else ing.speed / rows
        out.append(F.avg_pool2d(speed, window, stride=1).flatten(1).amax(dim=1))
    return torch.stack(out, dim=1).double().numpy()


class Scorer:
    """A variant's raw score: its terms standardized over the training frames, then weighted."""

    def __init__(self, model: AnoMem, variant: Variant, fit: Ingredients) -> None:
        self.model, self.variant = model, variant
        self.rows = row_speed_scale(fit.speed) if variant.per_row_speed else None
        fitted = terms(model, fit, variant, self.rows)
        self.mean, self.std = fitted.mean(axis=0), np.maximum(fitted.std(axis=0, ddof=1), 1e-6)
        weights = [1.0] * len(variant.scales) + ([variant.speed] if variant.speed > 0 else [])
        self.weights = np.asarray(weights) / sum(weights)

    def __call__(self, ing: Ingredients) -> list[np.ndarray]:
        standardized = (terms(self.model, ing, self.variant, self.rows) - self.mean) / self.std
        return ing.split((standardized * self.weights).sum(axis=1))


@torch.no_grad()
def svdd_scores(model: AnoMem, ing: Ingredients, batch_size: int = 256) -> list[np.ndarray]:
    """The stage-2 Deep-SVDD detector's scores of cached maps (`model.score` "svdd")."""
    out = []
    for start in range(0, len(ing.speed), batch_size):
        maps = [m[start : start + batch_size] for m in ing.maps]
        out.append(model.detector(model.stack_maps(maps)).double().numpy())
    return ing.split(np.concatenate(out))


def live(raw: list[np.ndarray], calibration: Calibration, smoothing: int) -> list[np.ndarray]:
    """Per clip: calibrated, then the causal mean of the last `smoothing` (as the monitor scores)."""
    return [causal_smooth(calibration.normalize(r), smoothing) for r in raw]


def faster(frames: np.ndarray, lag: int) -> np.ndarray:
    """Model inputs of a clip played `lag` times faster in its motion cue: each frame paired with the
    one `lag` frames before it (the first ones with the first frame)."""
    previous = frames[np.maximum(np.arange(len(frames)) - lag, 0)]
    return np.concatenate([frames, previous], axis=1)


def walkers(
    fit: list[np.ndarray], speed: torch.Tensor, window: tuple[int, int], count: int = 64
) -> np.ndarray:
    """Crops [N, h, w] of moving objects in the training frames (the normal walkers): in up to `count`
    frames spread over the footage that move at all, the `window` (stride-8 cells, the measured
    object size) around the fastest cell."""
    frames = np.concatenate([x[:, 0] for x in fit])  # the current frames, grey
    fastest = speed.flatten(1).amax(dim=1)
    moving = np.flatnonzero(fastest.numpy() > MOVING_SPEED)
    h0, w0 = speed.shape[-2:]
    wh, ww = window
    crops = []
    for i in moving[:: max(1, len(moving) // count)][:count]:
        cy, cx = divmod(int(speed[i, 0].flatten().argmax()), w0)
        top, left = min(max(0, cy - wh // 2), h0 - wh), min(max(0, cx - ww // 2), w0 - ww)
        crops.append(frames[i, 8 * top : 8 * (top + wh), 8 * left : 8 * (left + ww)])
    if not crops:
        raise SystemExit("the training frames hold no moving object to make fast-walker events of")
    return np.stack(crops)


def walker_speed(speed: torch.Tensor) -> float:
    """The normal walkers' speed in input pixels per frame: ROW_QUANTILE of the moving cells' speed."""
    cells = speed.flatten()
    return float(torch.quantile(cells[cells > MOVING_SPEED], ROW_QUANTILE))


def pseudo_inputs(
    holdout: list[Clip],
    cfg: ExperimentConfig,
    objects: np.ndarray,
    walker_crops: np.ndarray,
    walker_px: float,
) -> dict[str, list[np.ndarray]]:
    """Per kind, the model inputs of every held-out segment with an event for its whole length.

    fast-walkers: a crop of one of the scene's own walkers (`walker_crops`) blended in at its size
    and moving at 2 to 4 times the normal walkers' speed (`walker_px`): a cyclist or skater, as far
    as normal footage can tell."""
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    width, height = cfg.input.width, cfg.input.height
    walker = {
        "speed_fraction": (2 * walker_px / width, 4 * walker_px / width),
        "height_fraction": (0.9 * walker_crops.shape[1] / height, 1.1 * walker_crops.shape[1] / height),
    }
    kinds = [("fast-patches", "fast-patches", None, {}), ("foreign-objects", "foreign-objects", objects, {})]
    kinds.append(("fast-walkers", "foreign-objects", walker_crops, walker))
    for k, (name, kind, things, options) in enumerate(kinds):
        rng = np.random.default_rng(k)
        for clip in holdout:
            for _ in range(DRAWS):
                frames = event_for_whole_clip(clip.frames, rng, kind, things, **options)
                out[name].append(with_motion(frames, cfg.input))
    out["faster-3x"] = [faster(clip.frames, LAG) for clip in holdout]
    return out


def row(
    scene: str,
    name: str,
    raw_of: Callable[[str], list[np.ndarray]],
    smoothing: int,
    labels: list[np.ndarray],
    false_alarm_rate: float,
) -> dict[str, Any]:
    """One scorer's criterion and test figures; `raw_of(set)` gives its raw scores per clip of a set:
    "clean" (held-out segments), a KINDS entry (the same with events) or "test"."""
    clean_raw = raw_of("clean")
    calibration = calibrate(np.concatenate(clean_raw), false_alarm_rate)
    clean_live = np.concatenate(live(clean_raw, calibration, smoothing))
    per_kind = {}
    for kind in KINDS:
        event_live = np.concatenate(live(raw_of(kind), calibration, smoothing))
        y = np.concatenate([np.zeros(len(clean_live)), np.ones(len(event_live))])
        per_kind[kind] = auroc(y, np.concatenate([clean_live, event_live]))
    test_raw = raw_of("test")
    test_live = live(test_raw, calibration, smoothing)
    out = {
        "scene": scene,
        "variant": name,
        "criterion": float(np.mean(list(per_kind.values()))),
        **{f"criterion {kind}": value for kind, value in per_kind.items()},
        "test_auroc_causal_micro": frame_aurocs(labels, test_live)["auroc_causal_micro"],
        **operating_point(labels, test_raw, test_live, calibration),
    }
    tqdm.write(f"{scene} {name}: criterion {out['criterion']:.4f}, test {out['test_auroc_causal_micro']:.4f}")
    return out


def scene_rows(
    scene: str, workdir: Path, objects: np.ndarray, overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    root, split = SCENES[scene]
    cfg = load_config(None, overrides)
    train, test = split(root, cfg)
    print(f"== {scene}: {len(train)} training clips, {len(test)} test clips", flush=True)
    model, _ = load_model(trained_checkpoint(scene, "anomem", cfg, train, workdir))
    assert isinstance(model, AnoMem)
    fit, holdout = split_holdout(train, cfg.train.holdout_fraction)
    inputs = {"fit": [model_inputs([c], cfg) for c in fit]}
    cache = {"fit": ingredients(model, inputs["fit"], f"{scene} fit")}
    crops = walkers(inputs["fit"], cache["fit"].speed, model.object_window)
    inputs |= {
        "clean": [model_inputs([c], cfg) for c in holdout],
        **pseudo_inputs(holdout, cfg, objects, crops, walker_speed(cache["fit"].speed)),
        "test": [model_inputs([c], cfg) for c in test],
    }
    cache |= {key: ingredients(model, x, f"{scene} {key}") for key, x in inputs.items() if key != "fit"}
    labels = [c.labels for c in test if c.labels is not None]
    rate, smoothing = cfg.train.false_alarm_rate, cfg.train.smoothing_frames
    rows = []
    for variant in VARIANTS:
        scorer = Scorer(model, variant, cache["fit"])
        if variant == Variant("default"):  # the cache rebuilds what training fitted
            stats = model.term_stats.double().numpy()
            if not np.allclose(stats, [scorer.mean, scorer.std], rtol=1e-3, atol=1e-4):
                raise SystemExit(f"{scene}: the default's term statistics differ from the checkpoint's")
        rows.append(
            row(scene, variant.name, lambda key, s=scorer: s(cache[key]), variant.smoothing, labels, rate)
        )
    rows.append(
        row(scene, "svdd detector", lambda key: svdd_scores(model, cache[key]), smoothing, labels, rate)
    )
    daad_cfg = load_config(None, {"model.name": "daad"})
    daad, _ = load_model(trained_checkpoint(scene, "daad", daad_cfg, train, workdir))

    def daad_raw(key: str) -> list[np.ndarray]:
        raw = score_inputs(daad, np.concatenate(inputs[key]), desc=f"{scene} daad {key}")[0]
        return np.split(raw, np.cumsum([len(x) for x in inputs[key]])[:-1])

    rows.append(row(scene, "daad default", daad_raw, smoothing, labels, rate))
    c = cfg.input.frame_channels
    for baseline in ("frame-diff-mean", "frame-diff-max-cell"):

        def baseline_raw(key: str, name: str = baseline) -> list[np.ndarray]:
            return [pair_difference(x[:, :c], x[:, c:])[name].astype(np.float64) for x in inputs[key]]

        rows.append(row(scene, baseline, baseline_raw, smoothing, labels, rate))
    return rows


def spearman(rows: list[dict[str, Any]]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([r["criterion"] for r in rows], [r["test_auroc_causal_micro"] for r in rows])[0])


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scene in dict.fromkeys(r["scene"] for r in rows):
        per = [r for r in rows if r["scene"] == scene]
        picked = max(per, key=lambda r: r["criterion"])
        default = next(r for r in per if r["variant"] == "default")
        best = max(r["test_auroc_causal_micro"] for r in per)
        out.append(
            {
                "scene": scene,
                "variants": len(per),
                "spearman": spearman(per),
                "spearman_anomem_settings": spearman([r for r in per if r["variant"] not in OTHERS]),
                "picked": picked["variant"],
                "picked_test_auroc": picked["test_auroc_causal_micro"],
                "default_test_auroc": default["test_auroc_causal_micro"],
                "best_test_auroc": best,
            }
        )
    return out


def markdown(rows: list[dict[str, Any]], means: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# Label-free criterion: AnoMem score settings ranked on normal footage",
        "",
        f"Command: `{env['command']}` ({env['date']})  ",
        f"Machine: {env['machine']}, torch {env['torch']}, {env['threads']} threads. AnoMem config: "
        f"{env['overrides'] or 'the defaults'}.",
        "",
        'Protocol: docs/evaluation.md, "Label-free criterion" (written before these numbers; the fast '
        "walkers were added after a first run). Criterion = mean over the four synthetic kinds of the "
        "causal AUROC, held-out normal segments against the "
        "same segments with an event; test = causal micro AUROC on the labelled test frames "
        "(benchmarks/scenes.py protocol); FAR = normal test frames above the threshold calibrated at 1% "
        "on the held-out frames (raw / the monitor's smoothed rule). One network per scene, trained with "
        "the default config; the variants change only the score. The baselines and DAAD are scored like "
        "the variants (calibrated on the held-out frames, then smoothed), so their test AUROC differs a "
        "little from scenes.py's, which smooths the baselines' raw differences.",
        "",
        "| scene | variant | criterion | fast patches | foreign objects | 3x faster | fast walkers "
        "| test causal micro "
        "| FAR raw | FAR smoothed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scene']} | {r['variant']} | {r['criterion']:.4f} | {r['criterion fast-patches']:.4f} "
            f"| {r['criterion foreign-objects']:.4f} | {r['criterion faster-3x']:.4f} "
            f"| {r['criterion fast-walkers']:.4f} "
            f"| {r['test_auroc_causal_micro']:.4f} | {r['false_alarm_rate_raw']:.3f} "
            f"| {r['false_alarm_rate_smoothed']:.3f} |"
        )
    lines += [
        "",
        "| scene | scorers | Spearman (criterion vs test) | among AnoMem's settings only | criterion picks "
        "| its test AUROC | default's | best scorer's (hindsight) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in means:
        lines.append(
            f"| {m['scene']} | {m['variants']} | {m['spearman']:+.3f} | {m['spearman_anomem_settings']:+.3f} "
            f"| {m['picked']} "
            f"| {m['picked_test_auroc']:.4f} | {m['default_test_auroc']:.4f} | {m['best_test_auroc']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="AnoMem config override (training)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=Path("runs/scenes"), help="checkpoints (reused)")
    parser.add_argument("--objects", type=Path, default=OBJECTS, help="CIFAR-10 JPEG zip (foreign objects)")
    parser.add_argument("--out", type=Path, default=RESULTS / "criterion", help="output path without suffix")
    args = parser.parse_args(argv)
    if not args.objects.is_file():
        parser.error(f"--objects {args.objects}: no such file (the CIFAR-10 JPEG zip)")
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    objects = load_objects(str(args.objects))
    rows: list[dict[str, Any]] = []
    for scene in args.scenes:
        rows += scene_rows(scene, args.workdir, objects, overrides)
        means = summary(rows)  # written after every scene, so an interrupted run keeps its rows
        env = {**environment(), "overrides": overrides}
        write_results(args.out, env, rows, markdown(rows, means, env), summary=means)
    return 0


if __name__ == "__main__":
    sys.exit(main())
