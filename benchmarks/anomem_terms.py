"""AnoMem's one-class score term by term on Ped2 (a test-set diagnostic, reported as such).

For each checkpoint: the causal micro AUROC (MODELS.md protocol) of every standardized score term
alone (one per scale, then the speed term), of their equal-weight sum (the shipped score), and of the
coarse scale with the speed at several weight ratios; beside them, each term's AUROC on the
label-free synthetic validation (fast-moving scene patches pasted into the held-out training clips,
`model/pseudo_anomaly.py`), to see whether that validation would pick the same terms. Nothing here
changes a checkpoint.

    python benchmarks/anomem_terms.py benchmarks/artifacts/anomem_ped2.safetensors \
        --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import write_report
from tqdm import tqdm

from model.anomem.model import AnoMem
from model.data import load_clips, with_motion
from model.metrics import auroc, causal_smooth, frame_aurocs
from model.pipeline import load_model, split_holdout
from model.pseudo_anomaly import add_moving_patches

RESULTS = Path(__file__).parent / "results"
RATIOS = (0.5, 1.0, 2.0)  # speed : coarse-scale weight, on the standardized terms


@torch.no_grad()
def standardized_terms(model: AnoMem, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """[N, T] score terms of uint8 model inputs, each standardized by the checkpoint's term statistics."""
    out = []
    for start in range(0, len(inputs), batch):
        current, motion = model.split_input(torch.from_numpy(inputs[start : start + batch]))
        terms = model.score_terms(model.deviations(current, motion), motion)
        out.append(((terms - model.term_stats[0]) / model.term_stats[1]).numpy())
    return np.concatenate(out)


def analyse(checkpoint: str, data: str, seed: int) -> dict[str, Any]:
    model, meta = load_model(checkpoint)
    if not isinstance(model, AnoMem) or not meta.config.input.motion:
        raise SystemExit(f"anomem_terms: {checkpoint} is not an AnoMem checkpoint with motion")
    cfg = meta.config
    smoothing = cfg.train.smoothing_frames
    clips = load_clips(data, cfg.input, split="test")
    labels = [c.labels for c in clips]
    terms = [standardized_terms(model, with_motion(c.frames, cfg.input)) for c in tqdm(clips, desc="test")]
    names = [f"stride {8 * 2**s}" for s in model.scales] + ["speed"]

    def test_auroc(weights: np.ndarray) -> float:
        scores = [causal_smooth(t @ weights, smoothing) for t in terms]
        return round(frame_aurocs(labels, scores)["auroc_causal_micro"], 4)  # type: ignore[arg-type]

    _, holdout = split_holdout(load_clips(data, cfg.input, split="train"), cfg.train.holdout_fraction)
    rng = np.random.default_rng(seed)
    pseudo_terms, pseudo_labels = [], []
    for clip in holdout:
        frames, lab = add_moving_patches(clip.frames, rng)
        pseudo_terms.append(standardized_terms(model, with_motion(frames, cfg.input)))
        pseudo_labels.append(lab)
    y, x = np.concatenate(pseudo_labels), np.concatenate(pseudo_terms)
    n = len(names)
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        rows.append({"score": f"{name} alone", "test": test_auroc(np.eye(n)[i]), "pseudo": auroc(y, x[:, i])})
    rows.append({"score": "equal-weight sum (the score)", "test": test_auroc(np.full(n, 1 / n))})
    for ratio in RATIOS:
        weights = np.zeros(n)
        weights[n - 2], weights[n - 1] = 1.0, ratio
        rows.append({"score": f"coarse scale + {ratio:g} x speed", "test": test_auroc(weights)})
    return {"checkpoint": checkpoint, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="AnoMem checkpoints (with motion)")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic events")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "anomem_terms.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [analyse(c, args.data, args.seed) for c in args.checkpoints]
    command = " ".join(["python", "benchmarks/anomem_terms.py", *sys.argv[1:]])
    report = {
        "command": command,
        "protocol": "Ped2 test, causal micro AUROC of standardized score terms (a test-set diagnostic); "
        "pseudo = unsmoothed AUROC of the term on the held-out training clips with synthetic fast patches",
        "results": results,
    }
    cells = [
        [
            Path(r["checkpoint"]).name,
            row["score"],
            f"{row['test']:.4f}",
            f"{row['pseudo']:.4f}" if "pseudo" in row else "",
        ]
        for r in results
        for row in r["rows"]
    ]
    write_report(
        args.out,
        report,
        "AnoMem's score terms on Ped2 (causal micro AUROC; a test-set diagnostic)",
        ["checkpoint", "score", "test AUROC", "synthetic-validation AUROC"],
        cells,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
