import numpy as np
import pytest
import torch

from model.anomem.train import (
    deviation_maps,
    fit_deviation_stats,
    fit_object_window,
    fit_term_stats,
    moving_region_sizes,
)
from model.config import ConfigError, parse_config
from model.motion import edge_margin, pyramid_speed
from model.pipeline import build_model
from tests.conftest import TINY, tiny_config


@pytest.mark.parametrize("motion", [True, False])
def test_forward_takes_uint8_and_returns_score_and_low_res_map(motion: bool) -> None:
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"motion": motion})})
    model = build_model(cfg).eval()
    frames = torch.randint(0, 256, (3, cfg.input.channels, 32, 48), dtype=torch.uint8)
    score, heatmap = model(frames)
    assert score.shape == (3,)
    assert heatmap.shape == (3, 1, 4, 6)
    assert torch.isfinite(score).all() and torch.isfinite(heatmap).all()


def test_deviation_is_zero_where_features_equal_their_prototypes() -> None:
    cfg = tiny_config(memories=[{"slots": 400, "dim": 140, "beta": 2000.0}] * 3, scales=[0])
    model = build_model(cfg).eval()
    still = torch.randint(0, 256, (1, 1, 32, 48), dtype=torch.uint8).repeat(1, 2, 1, 1)  # no motion
    with torch.no_grad():
        desc = model.describe(*model.split_input(still))
        model.memories[0].initialize_slots(desc.maps[0])  # every position's descriptor is now a slot
        deviation = model.raw_deviations(desc)[0]
        assert deviation.shape == (1, 1, 16, 24)  # CIFAR stem: scale 0 is stride 2
        assert deviation.max() < 1e-3
        shifted = model.raw_deviations(model.describe(*model.split_input(255 - still)))[0]
        assert shifted.mean() > 0.1


def test_one_scale_model_and_scale_weights() -> None:
    model = build_model(tiny_config(scales=[2], scale_weights=[1.0])).eval()
    score, heatmap = model(torch.zeros(2, 2, 32, 48, dtype=torch.uint8))
    assert len(model.memories) == 1 and score.shape == (2,) and heatmap.shape == (2, 1, 4, 6)


def test_oneclass_score_adds_standardized_terms_and_a_fast_object_raises_the_motion_term() -> None:
    model = build_model(tiny_config(score_weights=[0.1, 0.2, 0.3, 0.4])).eval()
    with torch.no_grad():
        model.term_stats.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.5], [2.0, 1.0, 4.0, 0.25]]))
    frames = torch.randint(0, 256, (2, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        score, _ = model(frames)
        current, motion = model.split_input(frames)
        terms = model.score_terms(model.deviations(current, motion), motion)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = ((terms - model.term_stats[0]) / model.term_stats[1] * weights).sum(1)
    torch.testing.assert_close(score, expected)

    # A textured square that moves 2 px a frame against one that stands still: only the speed differs.
    rng = torch.Generator().manual_seed(0)
    texture = torch.randint(0, 256, (12, 12), generator=rng, dtype=torch.uint8)
    pair = torch.full((2, 2, 32, 48), 128, dtype=torch.uint8)
    pair[:, :, 10:22, 20:32] = texture  # both frames of both pairs
    pair[1, 1] = 128
    pair[1, 1, 10:22, 18:30] = texture  # the second pair's previous frame: 2 px to the left
    with torch.no_grad():
        terms = model.score_terms([torch.zeros(2, 1, 4, 6)] * 3, model.split_input(pair)[1])
    assert terms[0, 3] < 0.05 and terms[1, 3] > 0.5


def test_motion_near_the_frame_edges_is_dropped() -> None:
    """The motion field is 0 within edge_margin(flow_window) px of the edges and, inside, the frame
    difference and the Lucas-Kanade speed."""
    model = build_model(tiny_config()).eval()
    texture = torch.randint(0, 256, (2, 1, 32, 48), dtype=torch.uint8)
    frames = torch.cat([texture, torch.roll(texture, 2, dims=3)], dim=1)  # wraps round at the edges
    m = edge_margin(model.cfg.flow_window)
    x = frames.float() / 255.0
    with torch.no_grad():
        speed = pyramid_speed(x[:, :1], x[:, 1:], model.sobel, model.cfg.flow_window, 1)
        kept = torch.cat([(x[:, :1] - x[:, 1:]).abs(), speed], dim=1)
        dropped = model.split_input(frames)[1]
    assert dropped is not None
    inner = torch.zeros_like(kept, dtype=torch.bool)
    inner[..., m : 32 - m, m : 48 - m] = True
    torch.testing.assert_close(dropped[inner], kept[inner])
    assert (dropped[~inner] == 0).all() and kept[~inner].abs().max() > 0.1


def test_noise_floor_silences_sensor_noise_and_keeps_real_motion() -> None:
    """motion_noise_floor: |frame - previous| below the floor (in grey levels) reads as no motion;
    above it, the difference less the floor. The speed channel is unchanged."""
    off = build_model(tiny_config()).eval()
    floored = build_model(tiny_config(motion_noise_floor=3.0)).eval()
    g = torch.Generator().manual_seed(0)
    scene = torch.randint(60, 200, (1, 1, 32, 48), generator=g, dtype=torch.uint8)
    noise = torch.randint(-2, 3, scene.shape, generator=g)  # +-2 grey levels, as compression noise
    noisy = (scene.int() + noise).clamp(0, 255).to(torch.uint8)
    moved = noisy.clone()
    moved[..., 10:20, 10:20] = 250  # a bright object where the scene was 60-200
    with torch.no_grad():
        quiet_off = off.split_input(torch.cat([noisy, scene], dim=1))[1]
        quiet = floored.split_input(torch.cat([noisy, scene], dim=1))[1]
        moving_off = off.split_input(torch.cat([moved, scene], dim=1))[1]
        moving = floored.split_input(torch.cat([moved, scene], dim=1))[1]
    assert quiet_off is not None and quiet is not None and moving_off is not None and moving is not None
    inner = (slice(None), 0, slice(10, 22), slice(10, 38))  # edge_margin(15) = 10 px
    assert quiet_off[inner].mean() > 0.5 / 255 and (quiet[:, 0] == 0).all()
    obj = (slice(None), 0, slice(10, 20), slice(10, 20))
    torch.testing.assert_close(moving[obj], (moving_off[obj] - 3 / 255).clamp(min=0))
    assert moving[obj].min() > 40 / 255
    torch.testing.assert_close(moving[:, 1], moving_off[:, 1])  # the Lucas-Kanade speed


def test_area_pooling_takes_the_same_image_area_on_every_scale() -> None:
    """A 32 x 32 px hot square in a 128 x 128 px frame, top-2 of the stride-32 grid (2048 px^2)."""
    maps = [torch.zeros(1, 1, 128 // s, 128 // s) for s in (8, 16, 32)]
    for m, s in zip(maps, (8, 16, 32), strict=True):
        m[..., : 32 // s, : 32 // s] = 1.0
    area = build_model(tiny_config(topk=2)).eval()
    assert area.topk_cells == [32, 8, 2]
    torch.testing.assert_close(area.score_terms(maps, None), torch.tensor([[0.5, 0.5, 0.5]]))


def test_object_pooling_reads_one_object_however_many_walk() -> None:
    """Walkers 2 x 1 cells at speed 1 and a cyclist 2 x 1 cells at speed 2 on a 4 x 6 grid."""
    window = build_model(tiny_config(object_window=[2, 1])).eval()
    walkers = torch.zeros(4, 1, 4, 6)
    for n in range(3):
        walkers[n:, :, 0:2, 2 * n] = 1.0  # frame n holds n + 1 walkers; frame 3 three walkers
    cyclist = torch.zeros(1, 1, 4, 6)
    cyclist[..., 2:4, 3] = 2.0
    field = torch.cat([walkers[:3], cyclist])  # one, two, three walkers; the cyclist alone
    torch.testing.assert_close(window.motion_term(field), torch.tensor([1.0, 1.0, 1.0, 2.0]))
    # The mean of the 16 fastest cells would rank three walkers (6 / 16) above the cyclist (4 / 16).


def test_object_window_is_clipped_to_the_grid_and_a_square_until_measured() -> None:
    assert build_model(tiny_config()).eval().object_window == (4, 4)  # grid 4 x 6
    assert build_model(tiny_config(object_window=[9, 9])).eval().object_window == (4, 6)  # clipped
    assert build_model(tiny_config(object_window=[3, 2])).eval().object_window == (3, 2)


def test_moving_region_sizes_are_bounding_boxes_of_regions_of_16_pixels_or_more() -> None:
    speed = np.zeros((2, 60, 90), np.float32)
    speed[0, 5:15, 10:16] = 1.0  # 10 x 6
    speed[0, 30:33, 40:43] = 3.0  # 9 pixels: noise
    speed[1, 20:50, 30:50] = 0.8  # 30 x 20
    speed[1, 0:4, 0:8] = 0.4  # slower than 0.5 px per frame: not moving
    np.testing.assert_array_equal(moving_region_sizes(speed), [[10, 6], [30, 20]])


def test_object_window_is_measured_on_moving_objects_and_stored_in_the_config() -> None:
    """A textured 24 x 16 px block moving 1 px a frame: the window covers it and the flow's spread."""
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"height": 96, "width": 144})})
    model = build_model(cfg).eval()
    texture = np.random.default_rng(0).integers(0, 256, (24, 16), dtype=np.uint8)
    frames = np.full((12, 1, 96, 144), 100, np.uint8)
    for t in range(12):
        frames[t, 0, 36:60, 30 + t : 46 + t] = texture
    inputs = np.concatenate([frames[1:], frames[:-1]], axis=1)
    window = fit_object_window(model, inputs)
    assert model.cfg.object_window == window == model.object_window
    assert 3 <= window[0] <= 5 and 2 <= window[1] <= 4 and window[0] > window[1]
    still = build_model(cfg).eval()
    assert fit_object_window(still, np.concatenate([frames, frames], axis=1)) == (4, 4)  # nothing moves
    assert still.cfg.object_window is None


def test_term_statistics_standardize_normal_frames() -> None:
    model = build_model(tiny_config()).eval()
    inputs = torch.randint(0, 256, (40, 2, 32, 48), dtype=torch.uint8).numpy()
    deviations = deviation_maps(model, inputs, batch_size=16)
    fit_deviation_stats(model, deviations)
    fit_term_stats(model, inputs, deviations, batch_size=16)
    with torch.no_grad():
        current, motion = model.split_input(torch.from_numpy(inputs))
        terms = model.score_terms(model.deviations(current, motion), motion)
    z = (terms - model.term_stats[0]) / model.term_stats[1]
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4), atol=1e-4, rtol=0)


def test_detector_scores_drive_the_output_when_chosen() -> None:
    model = build_model(tiny_config(score="svdd")).eval()
    frames = torch.randint(0, 256, (2, 2, 32, 48), dtype=torch.uint8)
    score, _ = model(frames)
    current, motion = model.split_input(frames)
    maps = model.stack_maps(model.deviations(current, motion))
    torch.testing.assert_close(score, model.detector(maps))


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("model", "scales", [0, 5]),
        ("train", "epochs", 0),
        ("input", "height", 8),
        ("model", "encoder", "vgg"),
        ("model", "object_window", [0, 3]),
    ],
)
def test_bad_config_names_the_field(section: str, field: str, value: object) -> None:
    data = {k: dict(v) for k, v in TINY.items()}
    data[section][field] = value
    with pytest.raises(ConfigError, match=f"{section}.{field}"):
        parse_config(data, "cfg.yaml")
