"""DAAD: serving contract, block sizes, score composition, ONNX export, training."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import pipeline
from model.anomaly_map import smooth
from model.daad import train as daad_train
from model.daad.model import DAAD, Reconstruction
from model.evaluation import evaluate_path
from model.motion import drop_edges, edge_margin, lucas_kanade_speed, pyramid_speed
from tests.conftest import assert_onnx_matches_torch, tiny_daad_config


@pytest.mark.parametrize("motion", [True, False])
def test_forward_takes_uint8_and_returns_score_and_low_res_map(motion: bool) -> None:
    cfg = tiny_daad_config()
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"motion": motion})})
    model = pipeline.build_model(cfg).eval()
    assert isinstance(model, DAAD)
    frames = torch.randint(0, 256, (3, cfg.input.channels, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        score, heatmap = model(frames)
    assert score.shape == (3,) and score.dtype == torch.float32
    assert heatmap.shape == (3, 1, 8, 12) and heatmap.dtype == torch.float32
    assert torch.isfinite(score).all() and torch.isfinite(heatmap).all()


@pytest.mark.parametrize("block_size", [1, 2, 4, 8, 16, 32])
def test_every_block_size_divides_each_memory_stage_into_whole_blocks(block_size: int) -> None:
    cfg = tiny_daad_config(block_size=block_size, memory_stages=[1, 2, 3])
    model = pipeline.build_model(cfg).eval()
    assert isinstance(model, DAAD)
    assert model.blocks == {s: max(1, block_size // 2**s) for s in (1, 2, 3)}
    frames = torch.randint(0, 256, (2, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        rec = model.reconstruct(model.target(frames))
        score, heatmap = model(frames)
    # Inputs are padded so that every stage's map splits into whole blocks (32 x 48 stays for b <= 8).
    ph, pw = model.padded
    assert ph % 32 == 0 or block_size < 32
    assert rec.output.shape == rec.target.shape == (2, 2, ph, pw)
    for (stage, block), weights in zip(sorted(model.blocks.items()), rec.weights, strict=True):
        blocks = (ph // 2**stage // block) * (pw // 2**stage // block)
        assert weights.shape == (2, blocks, cfg.model.slots)
    assert score.shape == (2,) and heatmap.shape == (2, 1, 8, 12)


def test_decoder_sees_only_memory_readouts() -> None:
    """Frames whose memory read-outs are equal get the same reconstruction, whatever the encoder saw."""
    torch.manual_seed(0)
    model = pipeline.build_model(tiny_daad_config(slots=2, shrink=0.0)).eval()
    assert isinstance(model, DAAD)
    for memory in model.memories.values():
        # Equal slots: whatever the addressing weights (they sum to 1), every block reads the same.
        memory.slots.data[:] = 1.0
    a = torch.randint(0, 256, (1, 2, 32, 48), dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        features = model.encode(model.target(a)), model.encode(model.target(b))
    assert not torch.allclose(features[0][-1], features[1][-1])  # the encoder saw different frames
    with torch.no_grad():
        out_a, out_b = (model.reconstruct(model.target(x)).output for x in (a, b))
    torch.testing.assert_close(out_a, out_b)


def test_without_motion_input_the_motion_map_is_predicted_from_the_frame_alone() -> None:
    model = pipeline.build_model(tiny_daad_config(motion_input=False, motion_features="lk")).eval()
    assert isinstance(model, DAAD)
    assert model.encoder[0][0].in_channels == 1  # the grey frame only
    current = torch.randint(0, 256, (1, 1, 32, 48), dtype=torch.uint8)
    still = torch.cat([current, current], dim=1)
    moved = torch.cat([current, torch.roll(current, 2, dims=3)], dim=1)  # previous frame 2 px away
    with torch.no_grad():
        rec_still, rec_moved = model.reconstruct(model.target(still)), model.reconstruct(model.target(moved))
    # Same frame, same reconstruction (frame and motion map), though the motion targets differ.
    torch.testing.assert_close(rec_still.output, rec_moved.output)
    assert (rec_moved.target[:, 1] - rec_still.target[:, 1]).abs().mean() > 0.05
    assert model.pixel_error(rec_moved).mean() != model.pixel_error(rec_still).mean()


def test_faster_motion_error_scores_only_motion_above_the_rebuilt_one() -> None:
    model = pipeline.build_model(tiny_daad_config(motion_error="faster")).eval()
    assert isinstance(model, DAAD)
    target = torch.full((1, 2, 32, 48), 0.5)
    output = target.clone()
    output[:, 1, :, :24] = 0.9  # rebuilt faster than observed on the left half
    output[:, 1, :, 24:] = 0.1  # observed faster than rebuilt on the right half
    rec = Reconstruction(target=target, output=output, weights=[])
    scoring = model.pixel_error(rec, scoring=True)[0, 0]
    assert scoring[:, :24].abs().max() == 0
    torch.testing.assert_close(scoring[:, 24:], torch.full((32, 24), model.cfg.motion_weight * 0.16))
    training = model.pixel_error(rec)[0, 0]  # training fits both directions
    torch.testing.assert_close(training, torch.full((32, 48), model.cfg.motion_weight * 0.16))


def test_score_adds_the_normalized_latent_distance_when_weighted() -> None:
    frames = torch.randint(0, 256, (4, 2, 32, 48), dtype=torch.uint8)
    with_latent = pipeline.build_model(tiny_daad_config(latent_weight=0.5)).eval()
    without = pipeline.build_model(tiny_daad_config(latent_weight=0.0)).eval()
    without.load_state_dict(with_latent.state_dict())
    assert isinstance(with_latent, DAAD)
    with_latent.score_stats.copy_(torch.tensor([0.3, 2.0, 0.1, 4.0]))
    without.score_stats.copy_(with_latent.score_stats)
    with torch.no_grad():
        rec = with_latent.reconstruct(with_latent.target(frames))
        latent = (with_latent.latent_distance(rec) - 0.1) / 4.0
        torch.testing.assert_close(with_latent(frames)[0], without(frames)[0] + 0.5 * latent)


def test_speed_term_is_the_standardized_speed_of_the_fastest_cells() -> None:
    """The score adds speed_weight * (mean LK speed of the k fastest map cells - mean) / std."""
    torch.manual_seed(0)
    with_speed = pipeline.build_model(tiny_daad_config(speed_weight=0.5, speed_topk=3)).eval()
    without = pipeline.build_model(tiny_daad_config(speed_weight=0.0)).eval()
    assert isinstance(with_speed, DAAD) and isinstance(without, DAAD)
    assert with_speed.has_speed_term and not without.has_speed_term
    without.load_state_dict(with_speed.state_dict())
    with_speed.speed_stats.copy_(torch.tensor([0.2, 0.5]))
    texture = torch.randint(0, 256, (2, 1, 32, 48), dtype=torch.uint8)
    frames = torch.cat([texture, torch.roll(texture, 1, dims=3)], dim=1)  # everything moved 1 px
    with torch.no_grad():
        x = frames.float() / 255
        window = with_speed.cfg.flow_window
        speed = lucas_kanade_speed(x[:, :1], x[:, 1:], with_speed.sobel, window)
        # Edges dropped: 0 within 10 px of them; map_stride 4: 8 x 12 cells.
        cells = F.avg_pool2d(drop_edges(speed, edge_margin(window)), 4).flatten(1)
        expected = cells.topk(3, dim=1).values.mean(dim=1)
        torch.testing.assert_close(with_speed.speed(with_speed.speed_map(frames)), expected)
        (score, heatmap), (plain_score, plain_map) = with_speed(frames), without(frames)
        torch.testing.assert_close(score, plain_score + 0.5 * (expected - 0.2) / 0.5)
        # The map adds the standardized speed of the cells faster than the normal fastest ones.
        excess = ((cells.view(2, 1, 8, 12) - 0.2) / 0.5).clamp(min=0.0)
        torch.testing.assert_close(heatmap, plain_map + smooth(0.5 * excess, with_speed.map_kernel))
        assert excess.max() > 0
        # A still scene reads no speed; a whole-frame shift of 1 px reads about 1 px per frame.
        still = torch.cat([texture, texture], dim=1)
        assert with_speed.speed(with_speed.speed_map(still)).abs().max() < 1e-3
        assert 0.5 < float(expected.min()) < 2.0


def _entering_and_inside(step: int) -> torch.Tensor:
    """uint8 [2, 2, 32, 48] frame pairs on a flat street: a dark walker entering at the right edge
    (its first pixel column, absent from the previous frame), and a walker inside the frame, moved
    `step` px."""
    frames = torch.full((2, 2, 32, 48), 160, dtype=torch.uint8)
    frames[0, 0, 12:22, 47] = 40  # entering: only the current frame shows it
    frames[1, 0, 12:22, 20 + step : 26 + step] = 40
    frames[1, 1, 12:22, 20:26] = 40
    return frames


@pytest.mark.parametrize("features", ["flow", "lk"])
def test_motion_at_the_frame_edge_is_dropped(features: str) -> None:
    """A walker entering the frame moves neither the motion channel nor the speed term (no match in
    the previous frame: flow there is not a speed); inside the frame the motion is as computed."""
    model = pipeline.build_model(tiny_daad_config(motion_features=features)).eval()
    assert isinstance(model, DAAD)
    frames = _entering_and_inside(step=2)
    window = model.cfg.flow_window
    margin = edge_margin(window)  # 10 px of a 32 x 48 frame
    x = frames.float() / 255.0
    with torch.no_grad():
        kept = model._motion(x[:, :1], x[:, 1:])  # before the edges are dropped
        dropped = model.target(frames)[:, 1:, :32, :48]  # the motion channel
        kept_speed = model.speed(pyramid_speed(x[:, :1], x[:, 1:], model.sobel, window, 1))
        dropped_speed = model.speed(model.speed_map(frames))
    assert kept[0, :, :, 48 - margin :].max() > 0.1  # the entering walker reads as motion ...
    assert dropped[0, :, :, 48 - margin :].abs().max() == 0  # ... unless dropped
    assert dropped[0].abs().max() < 1e-3 and dropped_speed[0] < 1e-3  # nothing else moves in frame 0
    assert kept_speed[0] > 0.5
    inner = (slice(None), slice(margin, 32 - margin), slice(margin, 48 - margin))
    torch.testing.assert_close(dropped[1][inner], kept[1][inner])
    assert dropped[1][inner].max() > 0.1 and dropped_speed[1] > 0.1


def test_lk_motion_channel_and_speed_term_share_one_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `motion_features: lk` and a speed term, scoring computes the Lucas-Kanade flow once: the
    motion channel made from the speed map equals the one computed from the frames."""
    model = pipeline.build_model(tiny_daad_config(motion_features="lk", speed_weight=0.5)).eval()
    assert isinstance(model, DAAD) and model.has_speed_term
    frames = _entering_and_inside(step=2)
    calls = []

    def counted(*args: torch.Tensor | int) -> torch.Tensor:
        calls.append(1)
        return pyramid_speed(*args)  # type: ignore[arg-type]

    with torch.no_grad():
        torch.testing.assert_close(model.target(frames, model.speed_map(frames)), model.target(frames))
        monkeypatch.setattr("model.daad.model.pyramid_speed", counted)
        model(frames)
    assert len(calls) == 1


def test_speed_statistics_are_fitted_on_normal_frames() -> None:
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (20, 2, 32, 48), dtype=torch.uint8)
    model = pipeline.build_model(tiny_daad_config()).eval()
    assert isinstance(model, DAAD)
    daad_train.fit_normal_stats(model, frames.numpy())
    with torch.no_grad():
        speed = model.speed(model.speed_map(frames))
    torch.testing.assert_close(model.speed_stats, torch.stack([speed.mean(), speed.std()]))


def test_latent_distance_is_the_top_cells_or_the_pooled_features() -> None:
    frames = torch.randint(0, 256, (3, 2, 32, 48), dtype=torch.uint8)
    per_cell = pipeline.build_model(tiny_daad_config(latent_topk=1)).eval()
    pooled = pipeline.build_model(tiny_daad_config(latent_topk=None)).eval()
    pooled.load_state_dict(per_cell.state_dict(), strict=False)  # pooled: no per-cell statistics
    assert isinstance(per_cell, DAAD) and isinstance(pooled, DAAD)
    with torch.no_grad():
        rec = per_cell.reconstruct(per_cell.target(frames))
        real, fake = (per_cell.discriminator.feature_map(x) for x in (rec.target, rec.output))
        cells = (real - fake).pow(2).sum(dim=1)
        torch.testing.assert_close(per_cell.latent_distance(rec), cells.flatten(1).amax(dim=1))
        expected = (real.mean(dim=(2, 3)) - fake.mean(dim=(2, 3))).pow(2).sum(dim=1)
        torch.testing.assert_close(pooled.latent_distance(rec), expected)
        assert torch.all(expected <= cells.flatten(1).amax(dim=1))  # pooling dilutes a local difference


def test_latent_cells_are_standardized_per_position_with_normal_statistics() -> None:
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (24, 2, 32, 48), dtype=torch.uint8)
    per_position = pipeline.build_model(tiny_daad_config(latent_topk=2)).eval()
    assert isinstance(per_position, DAAD)
    assert {"lat_mean", "lat_std"} <= set(per_position.state_dict())  # fitted statistics are saved
    daad_train.fit_normal_stats(per_position, frames.numpy())
    with torch.no_grad():
        rec = per_position.reconstruct(per_position.target(frames))
        cells = per_position.latent_cells(rec)
        standardized = (cells - per_position.lat_mean) / per_position.lat_std
        # Over the normal frames every cell's standardized distance has mean 0.
        torch.testing.assert_close(
            standardized.mean(dim=0), torch.zeros_like(standardized[0]), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            per_position.latent_distance(rec), standardized.flatten(1).topk(2).values.mean(1)
        )
        # The frame-level statistics of the latent term are those of the distance the score uses.
        distance = per_position.latent_distance(rec)
        torch.testing.assert_close(
            per_position.score_stats[2:], torch.stack([distance.mean(), distance.std()])
        )


def test_onnx_export_runs_in_onnxruntime_like_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = pipeline.build_model(tiny_daad_config()).eval()
    assert_onnx_matches_torch(model, 2, tmp_path / "daad.onnx")


def test_training_smoke_writes_a_checkpoint_that_serves_and_evaluates(
    ped2_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "daad.safetensors"
    cfg = tiny_daad_config()
    meta = pipeline.train(ped2_like, out, cfg)
    assert meta.complete and meta.name == "daad" and meta.calibration is not None
    losses = meta.training["state"]["losses"]
    assert len(losses) == cfg.train.epochs
    assert {"reconstruction", "entropy", "adversarial", "feature_matching", "discriminator"} <= set(losses[0])
    assert losses[-1]["reconstruction"] < losses[0]["reconstruction"]
    model, loaded = pipeline.load_model(out)
    assert isinstance(model, DAAD) and loaded.config == cfg
    with pytest.raises(ValueError, match="only be chosen for AnoMem"):
        pipeline.load_model(out, score="svdd")
    # Normal statistics were fitted: not the initial placeholders.
    assert not torch.equal(model.score_stats, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert not torch.equal(model.err_std, torch.ones_like(model.err_std))
    result = evaluate_path(model, loaded.config, ped2_like, 4, calibration=loaded.calibration)
    assert result["frames"] == 48 and 0.0 <= float(result["pixel_auroc"]) <= 1.0
    # The generated anomaly (a big bright fast block) is easy: even a 2-epoch tiny model must see it.
    assert float(result["auroc_causal_micro"]) > 0.8, json.dumps(result)


def test_ablation_without_adversarial_terms_trains_no_discriminator(ped2_like: Path, tmp_path: Path) -> None:
    cfg = tiny_daad_config(latent_weight=0.0)
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={
                    "epochs": 1,
                    "daad": cfg.train.daad.model_copy(
                        update={"w_adversarial": 0.0, "w_feature_matching": 0.0}
                    ),
                }
            )
        }
    )
    torch.manual_seed(cfg.train.seed)  # the initial weights `train` starts from
    model = pipeline.build_model(cfg)
    assert isinstance(model, DAAD) and not daad_train.trains_discriminator(model, cfg.train)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    meta = pipeline.train(ped2_like, tmp_path / "plain.safetensors", cfg)
    assert set(meta.training["state"]["losses"][0]) == {"reconstruction", "entropy"}
    trained, _ = pipeline.load_model(tmp_path / "plain.safetensors")
    for name, tensor in trained.discriminator.state_dict().items():  # type: ignore[union-attr]
        torch.testing.assert_close(tensor, before[name])


def test_resume_continues_after_the_last_finished_epoch(ped2_like: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run.safetensors"
    cfg = tiny_daad_config()

    def crash(*args, **kwargs):  # a crash after training cannot be caused by real input
        raise RuntimeError("power cut")

    monkeypatch.setattr(daad_train, "fit_normal_stats", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        pipeline.train(ped2_like, out, cfg)
    monkeypatch.undo()
    _, partial = pipeline.load_checkpoint(out)
    assert not partial.complete and partial.training["state"]["epochs_done"] == cfg.train.epochs
    meta = pipeline.train(ped2_like, out, cfg, resume=True)
    assert meta.complete
    assert meta.training["state"]["losses"] == partial.training["state"]["losses"]  # not trained again


def test_anomalies_are_refused_for_daad(ped2_like: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs AnoMem"):
        pipeline.train(
            ped2_like, tmp_path / "x.safetensors", tiny_daad_config(), anomalies=ped2_like / "test"
        )
