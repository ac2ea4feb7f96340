"""AnoMem's one-class score term by term, and which terms two label-free validations would keep.

For each checkpoint, every non-empty subset of the standardized score terms (one per scale, then
the speed term) is scored with equal weights, calibrated on the clean held-out training clips (as
training calibrates) and smoothed as the live monitor smooths (`model.evaluation.live_scores`).
Each subset gets three AUROCs:

- test: the causal micro AUROC on Ped2's test set (MODELS.md protocol): a test-set diagnostic.
- fast patches: the held-out training clips with scene patches moving fast pasted in
  (`add_moving_patches`, the validation `pseudo_validation.py` uses), pooled over the seeds.
- foreign objects: the same clips with images of objects foreign to the scene crossing it at up to
  a few times walking pace (`add_foreign_objects`; the images are CIFAR-10 test photographs of all
  ten classes, converted to grey), pooled over the seeds.

The subset each validation ranks first is reported with its test AUROC: the label-free rule is
"keep the terms the validation ranks first". Nothing here changes a checkpoint.

    python benchmarks/anomem_terms.py benchmarks/artifacts/anomem_ped2.safetensors \
        --data ../shared/data/ucsd_ped2 --objects ../shared/data/cifar10/cifar10_jpg.zip
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pseudo_validation import add_events, load_objects
from report import write_report
from tqdm import tqdm

from model.anomem.model import AnoMem
from model.calibration import calibrate
from model.data import load_clips, with_motion
from model.evaluation import live_scores
from model.metrics import auroc, frame_aurocs
from model.pipeline import load_model, split_holdout

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def standardized_terms(model: AnoMem, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """[N, T] score terms of uint8 model inputs, each standardized by the checkpoint's term statistics."""
    out = []
    for start in range(0, len(inputs), batch):
        current, motion = model.split_input(torch.from_numpy(inputs[start : start + batch]))
        terms = model.score_terms(model.deviations(current, motion), motion)
        out.append(((terms - model.term_stats[0]) / model.term_stats[1]).numpy())
    return np.concatenate(out)


def live(terms: list[np.ndarray], weights: np.ndarray, calibration: Any, smoothing: int) -> list[np.ndarray]:
    """Each clip's weighted terms as the live monitor smooths them."""
    return [live_scores(t @ weights, calibration, smoothing) for t in terms]


def analyse(checkpoint: str, data: str, objects: np.ndarray, seeds: int) -> dict[str, Any]:
    model, meta = load_model(checkpoint)
    if not isinstance(model, AnoMem) or not meta.config.input.motion:
        raise SystemExit(f"anomem_terms: {checkpoint} is not an AnoMem checkpoint with motion")
    cfg = meta.config
    smoothing, far = cfg.train.smoothing_frames, cfg.train.false_alarm_rate
    clips = load_clips(data, cfg.input, split="test")
    labels = [c.labels for c in clips]
    test = [standardized_terms(model, with_motion(c.frames, cfg.input)) for c in tqdm(clips, desc="test")]
    _, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    clean = np.concatenate([standardized_terms(model, with_motion(c.frames, cfg.input)) for c in holdout])
    validations: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for name in ("fast patches", "foreign objects"):
        terms, labs = [], []
        for seed in tqdm(range(seeds), desc=name):
            rng = np.random.default_rng(seed)
            for clip in holdout:
                frames, lab = add_events(name.replace(" ", "-"), clip.frames, rng, objects)
                terms.append(standardized_terms(model, with_motion(frames, cfg.input)))
                labs.append(lab)
        validations[name] = (terms, labs)

    names = [f"stride {8 * 2**s}" for s in model.scales] + ["speed"]
    rows: list[dict[str, Any]] = []
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), size):
            weights = np.zeros(len(names))
            weights[list(subset)] = 1.0 / size
            calibration = calibrate(clean @ weights, far)

            test_scores = live(test, weights, calibration, smoothing)
            row: dict[str, Any] = {
                "terms": " + ".join(names[i] for i in subset),
                "test": round(frame_aurocs(labels, test_scores)["auroc_causal_micro"], 4),  # type: ignore[arg-type]
            }
            for name, (terms, labs) in validations.items():
                scores = np.concatenate(live(terms, weights, calibration, smoothing))
                row[name] = round(auroc(np.concatenate(labs), scores), 4)
            rows.append(row)
    picks = {name: max(rows, key=lambda r, n=name: r[n]) for name in validations}
    return {"checkpoint": checkpoint, "rows": rows, "picks": {k: v["terms"] for k, v in picks.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="AnoMem checkpoints (with motion)")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument(
        "--objects",
        default="../shared/data/cifar10/cifar10_jpg.zip",
        help="CIFAR-10 JPEG zip whose test images are the foreign objects",
    )
    parser.add_argument("--object-count", type=int, default=1000, help="object images used")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic event sets per validation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "anomem_terms.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    objects = load_objects(args.objects, args.object_count)
    results = [analyse(c, args.data, objects, args.seeds) for c in args.checkpoints]
    command = " ".join(["python", "benchmarks/anomem_terms.py", *sys.argv[1:]])
    report = {
        "command": command,
        "protocol": "every subset of the standardized score terms, equal weights, calibrated on the clean "
        "held-out training clips and smoothed as the live monitor does; test = Ped2 causal micro AUROC (a "
        "test-set diagnostic); fast patches / foreign objects = AUROC on the held-out training clips with "
        f"synthetic events ({args.seeds} seeds pooled); picks = the subset each validation ranks first",
        "results": results,
    }
    cells = []
    for r in results:
        for row in r["rows"]:
            marks = [n for n, terms in r["picks"].items() if terms == row["terms"]]
            cells.append(
                [
                    Path(r["checkpoint"]).name,
                    row["terms"] + (f" (picked by {', '.join(marks)})" if marks else ""),
                    f"{row['test']:.4f}",
                    f"{row['fast patches']:.4f}",
                    f"{row['foreign objects']:.4f}",
                ]
            )
    write_report(
        args.out,
        report,
        "AnoMem's score terms on Ped2 and on two label-free validations",
        ["checkpoint", "terms (equal weights)", "test AUROC", "fast patches AUROC", "foreign objects AUROC"],
        cells,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
