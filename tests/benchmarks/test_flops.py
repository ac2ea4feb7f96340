"""The FLOPs benchmark's pieces: the FLOP count, the roof share, the untrained export it times, and the
accuracy table with the large-fleet verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from flops import (
    CANDIDATE,
    CANDIDATE_OVERRIDES,
    REFERENCE,
    accuracy_rows,
    gflop_per_frame,
    load_source,
    matmul_gflops,
    parse_source,
    share_of_roof,
    timed_fps,
    untrained_checkpoint,
    verdict,
    verdict_line,
)
from runtimes import exported

from model.config import load_config
from model.runtime import open_runtime
from model.runtime.bench import sample_frames

SMALL = {"input.height": 96, "input.width": 128}  # the smallest input on the ImageNet stem


def test_the_flop_count_is_per_frame_and_halves_with_the_input_area() -> None:
    torch.set_num_threads(1)
    full = gflop_per_frame(load_config(None, SMALL))
    half = gflop_per_frame(load_config(None, {**SMALL, "input.width": 64}))
    assert full > 0.05
    assert 0.45 < half / full < 0.55
    # Per frame: two frames cost twice one (to within the few batch-independent products).
    assert gflop_per_frame(load_config(None, SMALL), batch=2) == pytest.approx(full, rel=0.01)


def test_the_roof_is_a_positive_rate_and_the_share_divides_by_it() -> None:
    rates = matmul_gflops(128, calls=3)
    assert len(rates) == 3 and all(0 < r < 1e4 for r in rates)
    # 0.5 GFLOP a frame at 40 frames/s is 20 GFLOP/s: a quarter of an 80 GFLOP/s roof.
    assert share_of_roof(0.5, 40.0, 80.0) == pytest.approx(0.25)
    assert share_of_roof(0.739, 100.0, 73.9) == pytest.approx(1.0)


def test_an_untrained_checkpoint_exports_and_runs_like_its_torch_forward(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ckpt = untrained_checkpoint(load_config(None, SMALL), tmp_path / "small.safetensors")
    folder = exported(str(ckpt), tmp_path / "fp32", "fp32", "unused: fp32 needs no calibration", "cpu")
    on_torch = open_runtime(ckpt, "torch", device="cpu", threads=1)
    on_ort = open_runtime(folder, "onnxruntime", device="cpu", threads=1)
    frames = sample_frames(on_torch, 2)
    np.testing.assert_allclose(on_ort.infer(frames)[0], on_torch.infer(frames)[0], rtol=1e-3, atol=1e-3)
    assert timed_fps(on_ort, frames, min_seconds=0.05) > 0


def _scenes_json(path: Path, overrides: dict[str, Any], auroc: dict[str, float]) -> str:
    rows = [{"scene": s, "model": "frame-diff-mean", "auroc_causal_micro": 0.7} for s in auroc]
    rows += [{"scene": s, "model": "anomem", "auroc_causal_micro": a} for s, a in auroc.items()]
    rows += [{"scene": "ped2", "model": "daad", "auroc_causal_micro": 0.5}]
    rows += [
        {
            "scene": "ped2",
            "model": "anomem first 100 frames",
            "footage_frames": 100,
            "auroc_causal_micro": 0.1,
        }
    ]
    data = {"command": "python benchmarks/scenes.py", "date": "2026-12-04T00:00:00+00:00"}
    path.write_text(json.dumps({**data, "overrides": overrides, "results": rows}))
    return str(path)


def _sources(tmp_path: Path, candidate: dict[str, float]) -> list[dict[str, Any]]:
    default = _scenes_json(tmp_path / "default.json", {}, {"ped2": 0.93, "ped1-dev": 0.89})
    cand = _scenes_json(tmp_path / "cand.json", CANDIDATE_OVERRIDES, candidate)
    return [
        load_source(*parse_source(f"default={default}")),
        load_source(*parse_source(f"large-fleet candidate={cand}")),
    ]


GFLOPS = {REFERENCE: 0.739, CANDIDATE: 0.353}


def test_the_accuracy_table_gives_each_scenes_loss_against_the_default(tmp_path: Path) -> None:
    rows = accuracy_rows(_sources(tmp_path, {"ped2": 0.925, "ped1-dev": 0.90}))
    loss = {(r["config"], r["scene"]): r["loss"] for r in rows}
    assert loss[(CANDIDATE, "ped2")] == pytest.approx(0.005)
    assert loss[(CANDIDATE, "ped1-dev")] == pytest.approx(-0.01)  # a gain is a negative loss
    assert loss[(REFERENCE, "ped2")] == 0.0
    auroc = {(r["config"], r["scene"]): r["auroc_causal_micro"] for r in rows}
    assert auroc[(CANDIDATE, "ped2")] == 0.925  # the AnoMem row, not the baseline, DAAD or footage rows
    v = verdict(GFLOPS, rows)
    assert v["met"] is True and v["flops_ratio"] == pytest.approx(0.353 / 0.739)
    assert "bar met" in verdict_line(v)


def test_the_verdict_fails_on_one_scene_and_waits_for_a_missing_one(tmp_path: Path) -> None:
    failed = verdict(GFLOPS, accuracy_rows(_sources(tmp_path, {"ped2": 0.90, "ped1-dev": 0.89})))
    assert failed["met"] is False and failed["losses"]["ped2"] == pytest.approx(0.03)
    assert "bar not met" in verdict_line(failed) and "ped2 +0.0300" in verdict_line(failed)
    missing = verdict(GFLOPS, accuracy_rows(_sources(tmp_path, {"ped2": 0.93})))
    assert missing["met"] is None and "ped1-dev no result" in verdict_line(missing)
    too_costly = verdict(
        {REFERENCE: 0.739, CANDIDATE: 0.4}, accuracy_rows(_sources(tmp_path, {"ped2": 0.93}))
    )
    assert too_costly["met"] is False  # over half the FLOPs fails even with a scene missing


def test_a_source_run_with_another_config_or_an_unknown_name_is_refused(tmp_path: Path) -> None:
    default = _scenes_json(tmp_path / "default.json", {}, {"ped2": 0.93})
    with pytest.raises(ValueError, match="not anomem large-fleet candidate's"):
        load_source(*parse_source(f"large-fleet candidate={default}"))
    with pytest.raises(ValueError, match="NAME one of default, large-fleet candidate"):
        parse_source(f"daad={default}")
    with pytest.raises(ValueError, match=r"not a readable benchmarks/scenes\.py result"):
        load_source(*parse_source(f"default={tmp_path / 'missing.json'}"))
