"""The label-free criterion's pieces: its synthetic events, and its score cache against the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from criterion import (
    DRAWS,
    KINDS,
    Scorer,
    Variant,
    faster,
    ingredients,
    pseudo_inputs,
    row_speed_scale,
    walker_speed,
    walkers,
)

from model.anomem.model import AnoMem
from model.data import Clip, load_clips, split_holdout, with_motion
from model.pipeline import load_model, model_inputs


def test_faster_pairs_each_frame_with_the_one_lag_frames_before() -> None:
    frames = np.arange(6, dtype=np.uint8).reshape(-1, 1, 1, 1)
    pairs = faster(frames, 3)
    assert pairs[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert pairs[:, 1, 0, 0].tolist() == [0, 0, 0, 0, 1, 2]


def test_every_frame_of_a_held_out_segment_carries_its_event(tiny_checkpoint: Path) -> None:
    _, meta = load_model(tiny_checkpoint)
    rng = np.random.default_rng(0)
    holdout = [
        Clip(name=f"s{i}", frames=rng.integers(90, 110, (n, 1, 32, 48)).astype(np.uint8))
        for i, n in enumerate((20, 17))
    ]
    objects = np.stack([np.full((32, 32), 250, np.uint8), np.full((32, 32), 5, np.uint8)])
    walker_crops = np.full((3, 16, 8), 250, np.uint8)
    inputs = pseudo_inputs(holdout, meta.config, objects, walker_crops, walker_px=1.0)
    assert sorted(inputs) == sorted(KINDS)
    for kind in ("fast-patches", "foreign-objects", "fast-walkers"):
        assert [len(x) for x in inputs[kind]] == [20] * DRAWS + [17] * DRAWS
        for x, clip in zip(inputs[kind], np.repeat(holdout, DRAWS), strict=True):
            changed = (x[:, :1] != clip.frames).reshape(len(x), -1).any(axis=1)
            assert changed.all(), kind  # the event lasts the whole segment
    assert [len(x) for x in inputs["faster-3x"]] == [20, 17]
    np.testing.assert_array_equal(inputs["faster-3x"][0][5, 1:], holdout[0].frames[2])


def test_the_default_variant_rebuilds_the_trained_score(ped2_like: Path, tiny_checkpoint: Path) -> None:
    model, meta = load_model(tiny_checkpoint)
    assert isinstance(model, AnoMem)
    cfg = meta.config
    fit, _ = split_holdout(load_clips(ped2_like, cfg.input, split="train"), cfg.train.holdout_fraction)
    scorer = Scorer(
        model, Variant("default", topk=cfg.model.topk), ingredients(model, [model_inputs(fit, cfg)], "fit")
    )
    np.testing.assert_allclose(scorer.mean, model.term_stats[0].double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scorer.std, model.term_stats[1].double().numpy(), rtol=1e-4, atol=1e-5)
    test = load_clips(ped2_like, cfg.input, split="test")
    inputs = [with_motion(c.frames, cfg.input) for c in test]
    cached = np.concatenate(scorer(ingredients(model, inputs, "test")))
    with torch.no_grad():
        direct = model(torch.from_numpy(np.concatenate(inputs)))[0].double().numpy()
    np.testing.assert_allclose(cached, direct, rtol=1e-4, atol=1e-4)
    # A variant without the speed term scores differently (the check above can fail).
    other = Scorer(
        model,
        Variant("no speed", topk=cfg.model.topk, speed=0.0),
        ingredients(model, [model_inputs(fit, cfg)], "fit"),
    )
    assert not np.allclose(np.concatenate(other(ingredients(model, inputs, "test"))), direct, atol=1e-3)


def test_the_per_row_speed_scale_reads_each_rows_normal_walkers_as_about_one() -> None:
    speed = torch.zeros(40, 1, 3, 10)
    speed[:, 0, 0, :5] = 4.0  # near the camera: walkers move 4 px a frame
    speed[:, 0, 1, :5] = 1.0  # far away: 1 px a frame
    speed[:5, 0, 2, 0] = 3.0  # a row with few moving cells takes the overall value
    scale = row_speed_scale(speed)[0, 0, :, 0]
    overall = float(torch.quantile(speed[speed > 0.5], 0.9))
    np.testing.assert_allclose(scale.numpy(), [4.0 / overall, 1.0 / overall, 1.0], rtol=1e-6)
    relative = speed / row_speed_scale(speed)
    assert torch.equal(relative[:, 0, 0, 0], relative[:, 0, 1, 0])  # near and far walkers read alike


def test_walker_crops_come_from_where_the_training_frames_move_at_the_objects_size() -> None:
    frames = np.zeros((6, 2, 32, 48), np.uint8)
    frames[:, 0, 8:24, 16:24] = 200  # a bright walker, 16 x 8 pixels (2 x 1 cells)
    speed = torch.zeros(6, 1, 4, 6)
    speed[:, 0, 1, 2], speed[:, 0, 2, 2] = 1.5, 2.0  # the walker's cells move
    speed[0] = 0.0  # a still frame gives no crop
    crops = walkers([frames], speed, window=(2, 1))
    assert crops.shape == (5, 16, 8) and (crops == 200).all()
    assert walker_speed(speed) == 2.0  # the 90th percentile of the moving cells
