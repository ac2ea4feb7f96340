import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.anomaly_map import topk_mean
from model.calibration import calibrate
from model.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)
from model.config import ExperimentConfig
from model.pipeline import build_model, load_model
from tests.conftest import tiny_config, tiny_daad_config


def _write(path: Path) -> torch.nn.Module:
    cfg = tiny_config()
    model = build_model(cfg).eval()
    meta = CheckpointMeta(
        name="anomem", version="t1", config=cfg, calibration=calibrate(torch.rand(50).numpy(), 0.1)
    )
    save_checkpoint(path, model.state_dict(), meta)
    return model


def test_round_trip_restores_weights_outputs_and_metadata(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors")
    restored, meta = load_model(tmp_path / "m.safetensors")
    frames = torch.randint(0, 256, (2, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(model(frames), restored(frames), strict=True):
            torch.testing.assert_close(a, b)
    assert meta.version == "t1" and meta.config == tiny_config() and meta.calibration is not None
    assert len(meta.weights_sha256) == 64


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _write(path)
    tensors, meta = load_checkpoint(path)
    tensors["memories.0.slots"] += 1.0
    save_file(tensors, str(path), metadata={"anomon": meta.model_dump_json()})
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_checkpoint(path)


def test_foreign_and_garbage_files_are_refused(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no anomon metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def _write_older(
    path: Path,
    model: torch.nn.Module,
    name: str,
    cfg: ExperimentConfig,
    missing: tuple[str, ...],
    drop: str = "",
) -> None:
    """Write a checkpoint as an older anomon did: model config fields `missing`, tensor `drop` absent."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != drop}
    fields = json.loads(CheckpointMeta(name=name, version="old", config=cfg).model_dump_json())
    for key in missing:
        del fields["config"]["model"][key]
    fields["weights_sha256"] = weights_digest(tensors)
    save_file(tensors, str(path), metadata={"anomon": json.dumps(fields)})


def test_anomem_checkpoint_from_before_the_score_terms_scores_as_it_did(tmp_path: Path) -> None:
    """A v5 checkpoint (no score_weights, no term_stats) keeps its score: sum_l w_l * top-k(D_l)."""
    cfg = tiny_config(scale_weights=[0.5, 0.3, 0.2])
    model = build_model(cfg).eval()
    path = tmp_path / "v5.safetensors"
    _write_older(path, model, "anomem", cfg, ("score_weights", "topk_pooling"), drop="term_stats")

    restored, meta = load_model(path)
    assert meta.config.model.score_weights == (0.5, 0.3, 0.2, 0.0)  # type: ignore[union-attr]
    assert meta.config.model.standardize_terms is False  # type: ignore[union-attr]
    frames = torch.randint(0, 256, (3, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        score, _ = restored(frames)
        deviations = restored.deviations(*restored.split_input(frames))
    old = sum(w * topk_mean(d, cfg.model.topk) for w, d in zip((0.5, 0.3, 0.2), deviations, strict=True))
    torch.testing.assert_close(score, old)


def test_anomem_checkpoint_from_before_area_pooling_pools_cells_as_it_did(tmp_path: Path) -> None:
    """A v6 checkpoint (no topk_pooling) keeps k cells on every scale; new ones pool equal areas."""
    cfg = tiny_config(topk=1)
    model = build_model(cfg).eval()
    path = tmp_path / "v6.safetensors"
    _write_older(path, model, "anomem", cfg, ("topk_pooling",))

    restored, meta = load_model(path)
    assert meta.config.model.topk_pooling == "cells"  # type: ignore[union-attr]
    frames = torch.randint(0, 256, (3, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        score, _ = restored(frames)
        current, motion = restored.split_input(frames)
        deviations = restored.deviations(current, motion)
        speed = restored.score_terms(deviations, motion)[:, 3:]
        new_score, _ = model(frames)
    old_terms = torch.cat([torch.stack([topk_mean(d, 1) for d in deviations], 1), speed], 1)
    torch.testing.assert_close(score, restored.oneclass_score(old_terms))
    assert not torch.allclose(score, new_score)  # topk 1 per grid vs 16 / 4 / 1 cells


@pytest.mark.parametrize("motion_features", ["lk", "flow"])
def test_anomem_checkpoint_from_before_object_pooling_keeps_the_fastest_cells(
    tmp_path: Path, motion_features: str
) -> None:
    """A v8 checkpoint (no motion_pooling) scores its speed term over the fastest cells, also with
    normal-flow motion, which the new default (object, lk only) would refuse."""
    cfg = tiny_config(motion_features=motion_features, motion_pooling="cells")
    model = build_model(cfg).eval()
    path = tmp_path / "v8.safetensors"
    _write_older(path, model, "anomem", cfg, ("motion_pooling", "object_window"))

    restored, meta = load_model(path)
    assert meta.config.model.motion_pooling == "cells"  # type: ignore[union-attr]
    texture = torch.randint(0, 256, (3, 1, 32, 48), dtype=torch.uint8)
    frames = torch.cat([texture, torch.roll(texture, 3, dims=3)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(restored(frames)[0], model(frames)[0])
        if motion_features == "lk":
            new = build_model(tiny_config(object_window=[2, 1])).eval()
            new.load_state_dict(model.state_dict())
            assert not torch.allclose(new(frames)[0], model(frames)[0])  # what the upgrade keeps apart


def test_daad_checkpoint_from_before_latent_stats_keeps_raw_latent_cells(tmp_path: Path) -> None:
    """A DAAD checkpoint without `latent_stats` (nor its buffers) loads and scores as before."""
    cfg = tiny_daad_config(latent_stats="frame")
    model = build_model(cfg).eval()
    model.score_stats.copy_(torch.tensor([0.3, 2.0, 0.1, 4.0]))  # type: ignore[operator]
    assert "lat_mean" not in model.state_dict()
    path = tmp_path / "daad_v1.safetensors"
    _write_older(path, model, "daad", cfg, ("latent_stats",))

    restored, meta = load_model(path)
    assert meta.config.model.latent_stats == "frame"  # type: ignore[union-attr]
    frames = torch.randint(0, 256, (3, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(restored(frames)[0], model(frames)[0])
    # Without the upgrade the new default (position) would look for fitted per-cell statistics.
    with pytest.raises(RuntimeError, match="lat_mean"):
        build_model(tiny_daad_config()).load_state_dict(load_checkpoint(path)[0], strict=True)


@pytest.mark.parametrize("name", ["anomem", "daad"])
def test_checkpoint_from_before_edge_motion_keeps_motion_up_to_the_edges(tmp_path: Path, name: str) -> None:
    """A checkpoint without `edge_motion` was trained on motion up to the frame's edges."""
    configure = tiny_config if name == "anomem" else tiny_daad_config
    cfg = configure(edge_motion="keep")
    model = build_model(cfg).eval()
    path = tmp_path / f"{name}_edges.safetensors"
    _write_older(path, model, name, cfg, ("edge_motion",))

    restored, meta = load_model(path)
    assert meta.config.model.edge_motion == "keep"
    assert configure().model.edge_motion == "drop"
    texture = torch.randint(0, 256, (3, 1, 32, 48), dtype=torch.uint8)
    frames = torch.cat([texture, torch.roll(texture, 3, dims=3)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(restored(frames)[0], model(frames)[0])
        new = build_model(configure()).eval()
        new.load_state_dict(model.state_dict())
        assert not torch.allclose(new(frames)[0], model(frames)[0])  # what the upgrade keeps apart


def test_daad_checkpoint_from_before_the_speed_term_scores_as_it_did(tmp_path: Path) -> None:
    """A DAAD checkpoint without `speed_weight` (nor `speed_stats`) loads with no speed term."""
    cfg = tiny_daad_config(speed_weight=0.0)
    model = build_model(cfg).eval()
    model.score_stats.copy_(torch.tensor([0.3, 2.0, 0.1, 4.0]))  # type: ignore[operator]
    assert "speed_stats" not in model.state_dict()
    path = tmp_path / "daad_v2.safetensors"
    _write_older(path, model, "daad", cfg, ("speed_weight", "speed_topk"))

    restored, meta = load_model(path)
    assert meta.config.model.speed_weight == 0.0  # type: ignore[union-attr]
    texture = torch.randint(0, 256, (3, 1, 32, 48), dtype=torch.uint8)
    frames = torch.cat([texture, torch.roll(texture, 3, dims=3)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(restored(frames)[0], model(frames)[0])
    # Without the upgrade the new default (a speed term) would look for its fitted statistics.
    with pytest.raises(RuntimeError, match="speed_stats"):
        build_model(tiny_daad_config()).load_state_dict(load_checkpoint(path)[0], strict=True)
