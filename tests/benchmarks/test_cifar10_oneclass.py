"""benchmarks/cifar10_oneclass.py: the pretrained variant's shortcut scores as the model does, and the
variant runs end to end on a tiny subset of the real data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from cifar10_oneclass import (
    DEFAULT_DATA,
    encoder_maps,
    main,
    make_config,
    merge,
    parse_args,
    scores_from_maps,
    upsample,
    with_score,
)

from model.anomem.model import AnoMem
from model.anomem.train import (
    TrainState,
    deviation_maps,
    fit_deviation_stats,
    fit_term_stats,
    stacked_maps,
    train_detector,
)
from model.pipeline import build_model, score_inputs


def test_scores_from_cached_encoder_maps_equal_the_models_forward() -> None:
    """The benchmark scores the test set from the frozen encoder's maps, computed once for all
    classes; both scores must be what the model itself returns for those images."""
    torch.manual_seed(0)
    args = parse_args(["--variant", "pretrained", "--size", "72", "--detector-epochs", "1"])
    cfg = make_config(args, epochs=1)
    model = build_model(cfg)
    assert isinstance(model, AnoMem) and model.encoder.frozen and model.map_sizes()[-1] == (3, 3)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    train_x, test_x = upsample(small[:16], 72), upsample(small[16:], 72)
    deviations = deviation_maps(model, train_x, batch_size=8)
    fit_deviation_stats(model, deviations)
    fit_term_stats(model, train_x, deviations)
    train_detector(model, stacked_maps(model, deviations), cfg.train, TrainState())

    oneclass, svdd = scores_from_maps(model, encoder_maps(model, test_x, batch_size=5), batch_size=3)
    ref_oneclass, _ = score_inputs(model, test_x)
    svdd_model = build_model(with_score(cfg, "svdd"), load_pretrained=False)
    svdd_model.load_state_dict(model.state_dict())
    ref_svdd, _ = score_inputs(svdd_model, test_x)
    assert np.std(ref_oneclass) > 0 and np.std(ref_svdd) > 0
    np.testing.assert_allclose(oneclass, ref_oneclass, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(svdd, ref_svdd, rtol=1e-4, atol=1e-5)


def test_an_efficientnet_input_of_64_px_or_less_is_refused_with_the_fix() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--variant", "pretrained", "--size", "64"])


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_DATA.is_file(), reason=f"CIFAR-10 not present at {DEFAULT_DATA}")
def test_the_pretrained_variant_trains_and_scores_a_tiny_subset(tmp_path: Path) -> None:
    out = tmp_path / "cifar.json"
    argv = ["--variant", "pretrained", "--classes", "3", "--limit-train", "64", "--limit-test", "64"]
    main([*argv, "--epochs", "1", "--threads", "1", "--json", str(out), "--md", str(tmp_path / "c.md")])
    data = json.loads(out.read_text())
    assert data["variant"] == "pretrained" and data["threads"] == 1 and not data["complete"]
    assert data["config"]["model"]["encoder"] == "efficientnet_lite0"
    assert data["config"]["model"]["freeze_encoder"] and data["config"]["input"]["height"] == 96
    (r,) = data["classes"]
    assert r["class"] == 3 and r["train_images"] == 64 and r["test_images"] == 64
    assert 0 < r["test_anomalies"] < 64
    assert 0 <= r["auroc_oneclass"] <= 1 and 0 <= r["auroc_svdd"] <= 1
    assert len(r["stage1_losses"]) == 1 and np.isfinite(r["stage1_losses"][0])
    assert "Partial: 1 of 10 classes" in (tmp_path / "c.md").read_text()


def _partial(classes: list[int], args: list[str], wall: float) -> dict:
    cfg = make_config(parse_args(args), epochs=3)
    rows = [
        {"class": c, "name": f"c{c}", "auroc_oneclass": 0.8, "auroc_svdd": 0.6, "train_images": 5000}
        | {"test_images": 10000, "train_seconds": 100.0}
        for c in classes
    ]
    command = f"python benchmarks/cifar10_oneclass.py --classes {classes[0]}"
    return {
        "command": command,
        "date": "2026-01-01T00:00",
        "wall_seconds": wall,
        "device_name": "cpu",
        "threads": 1,
        "variant": "pretrained",
        "epochs": 3,
        "config": cfg.model_dump(mode="json"),
        "classes": rows,
    }


def test_merged_runs_make_one_complete_table_that_names_each_run(tmp_path: Path) -> None:
    args = ["--variant", "pretrained"]
    (tmp_path / "a.json").write_text(json.dumps(_partial(list(range(9)), args, 2900.0)))
    (tmp_path / "b.json").write_text(json.dumps(_partial([9], args, 400.0)))
    out, md = tmp_path / "m.json", tmp_path / "m.md"
    merge([tmp_path / "a.json", tmp_path / "b.json"], out, md)
    data = json.loads(out.read_text())
    assert data["complete"] and [r["class"] for r in data["classes"]] == list(range(10))
    assert data["wall_seconds"] == 3300.0 and len(data["runs"]) == 2
    page = md.read_text()
    assert "Partial" not in page and "--classes 9` (2026-01-01T00:00; wall 7 min)" in page
    assert "**mean**" in page

    (tmp_path / "c.json").write_text(json.dumps(_partial([9], ["--variant", "scratch"], 400.0)))
    with pytest.raises(SystemExit, match="different configs"):
        merge([tmp_path / "a.json", tmp_path / "c.json"], out, md)
