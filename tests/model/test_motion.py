import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import ConfigError, parse_config
from model.motion import (
    _window_mean,
    drop_edges,
    edge_margin,
    lucas_kanade_speed,
    pyramid_speed,
    sobel_kernels,
)
from model.pipeline import build_model
from tests.conftest import TINY, assert_onnx_matches_torch, tiny_config, tiny_daad_config


def _texture(seed: int = 0, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    """Smooth random texture in [0, 1], [1, 1, H, W]: linear enough for a few pixels of motion."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, size[0] + 16, size[1] + 16, generator=g)
    for _ in range(3):
        noise = F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)
    noise = noise[..., 8:-8, 8:-8]
    return (noise - noise.min()) / (noise.max() - noise.min())


def _interior_speed(previous: torch.Tensor, current: torch.Tensor) -> float:
    speed = lucas_kanade_speed(current, previous, sobel_kernels(), 15)
    assert speed.shape == (1, 1, *current.shape[-2:])
    return float(speed[..., 16:-16, 16:-16].median())


@pytest.mark.parametrize(("dy", "dx"), [(0, 1), (1, 0), (0, 2), (-2, 1)])
def test_lucas_kanade_speed_reads_the_shift_in_pixels_per_frame(dy: int, dx: int) -> None:
    frame = _texture()
    moved = torch.roll(frame, shifts=(dy, dx), dims=(-2, -1))
    expected = float(np.hypot(dy, dx))
    assert _interior_speed(frame, moved) == pytest.approx(expected, rel=0.25)


@pytest.mark.parametrize("size", [3, 7, 15])
def test_window_mean_is_the_border_clipped_average(size: int) -> None:
    x = torch.rand(2, 5, 20, 31)
    expected = F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    torch.testing.assert_close(_window_mean(x, size, 5), expected, rtol=1e-5, atol=1e-6)


def test_drop_edges_zeroes_the_margin_and_keeps_the_interior() -> None:
    x = torch.rand(2, 3, 20, 30) + 1.0  # no zeros of its own
    y = drop_edges(x, 4)
    inner = torch.zeros_like(x, dtype=torch.bool)
    inner[..., 4:16, 4:26] = True
    assert y.shape == x.shape
    torch.testing.assert_close(y[inner], x[inner])
    assert (y[~inner] == 0).all()
    assert drop_edges(x, 0) is x
    # Every pixel whose window (plus the 3x3 blur and derivatives) reads the outermost pixel.
    assert (edge_margin(15), edge_margin(13), edge_margin(1)) == (10, 9, 3)


def test_lucas_kanade_speed_is_zero_for_a_still_frame_and_a_flat_one() -> None:
    frame = _texture(seed=1)
    assert _interior_speed(frame, frame) < 1e-3
    flat = torch.full((1, 1, 64, 64), 0.5)
    assert float(lucas_kanade_speed(flat + 0.1, flat, sobel_kernels(), 15).max()) < 1e-3


def test_lucas_kanade_speed_does_not_depend_on_contrast() -> None:
    frame = _texture(seed=2)
    moved = torch.roll(frame, shifts=(0, 1), dims=(-2, -1))
    full = _interior_speed(frame, moved)
    assert _interior_speed(0.3 * frame + 0.2, 0.3 * moved + 0.2) == pytest.approx(full, rel=0.05)


def test_pyramid_speed_keeps_rising_where_one_level_folds_back() -> None:
    frame = _texture(size=(160, 240))
    shifts = [1, 2, 4, 6, 8, 10]

    def reading(dx: int, levels: int) -> float:
        moved = torch.roll(frame, shifts=(0, dx), dims=(-2, -1))
        return float(pyramid_speed(moved, frame, sobel_kernels(), 15, levels)[..., 24:-24, 24:-24].median())

    one = [reading(d, 1) for d in shifts]
    three = [reading(d, 3) for d in shifts]
    assert one[-1] < one[2], f"one level no longer folds back beyond its range: {one}"
    assert all(a < b for a, b in itertools.pairwise(three)), f"not increasing: {three}"
    # Without warping each level reads high near the top of its range (up to 1.55x here), never low.
    assert all(0.9 * d <= r <= 1.6 * d for d, r in zip(shifts, three, strict=True)), three
    # One level is the plain estimate, bit for bit.
    moved = torch.roll(frame, shifts=(0, 2), dims=(-2, -1))
    assert torch.equal(
        pyramid_speed(moved, frame, sobel_kernels(), 15, 1),
        lucas_kanade_speed(moved, frame, sobel_kernels(), 15),
    )


def test_pyramid_speed_skips_levels_too_small_for_an_interior() -> None:
    frame = _texture(size=(32, 48))
    moved = torch.roll(frame, shifts=(0, 1), dims=(-2, -1))
    # Window 7: coarse levels use 3, margin 4; at 1/4 size (8x12) no interior is left.
    assert torch.equal(
        pyramid_speed(moved, frame, sobel_kernels(), 7, 3), pyramid_speed(moved, frame, sobel_kernels(), 7, 2)
    )


def test_lucas_kanade_speed_holds_in_half_precision() -> None:
    """FP16 graphs run it in half precision: flat ground must not underflow into NaN."""
    frame = _texture(seed=3)
    frame[..., :, :48] = 0.5  # a flat region beside the texture
    moved = torch.roll(frame, shifts=(0, 1), dims=(-2, -1))
    full = lucas_kanade_speed(moved, frame, sobel_kernels(), 15)
    # oneDNN's half-precision depthwise kernel never finishes compiling on CPUs with AVX512-FP16
    # (seen on a Sapphire Rapids Xeon: 20 min in its JIT generator); the FP16 graphs this checks the
    # arithmetic for run in ONNX Runtime or TensorRT, so PyTorch's own kernels do the half math here.
    with torch.backends.mkldnn.flags(enabled=False):
        half = lucas_kanade_speed(moved.half(), frame.half(), sobel_kernels().half(), 15).float()
    assert torch.isfinite(half).all()
    assert (half - full).abs().mean() < 0.02


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("name", ["anomem", "daad"])
def test_models_with_lucas_kanade_motion_export_to_onnxruntime_like_pytorch(
    name: str, levels: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    overrides: dict[str, object] = {"flow_window": 7, "flow_levels": levels}
    if name == "anomem":
        cfg = tiny_config(**overrides)  # AnoMem's motion is the Lucas-Kanade speed
    else:
        cfg = tiny_daad_config(motion_features="lk", **overrides)
    model = build_model(cfg).eval()
    # The motion features reach the score: a moving frame and a still one score differently.
    still = torch.randint(0, 256, (1, 1, 32, 48), dtype=torch.uint8).repeat(1, 2, 1, 1)
    moving = torch.cat([still[:, :1], torch.roll(still[:, 1:], shifts=2, dims=-1)], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model(still)[0], model(moving)[0])
    assert_onnx_matches_torch(model, cfg.input.channels, tmp_path / f"{name}.onnx")


def test_even_flow_window_is_refused_with_the_field_named() -> None:
    data = {k: dict(v) for k, v in TINY.items()}
    data["model"]["flow_window"] = 8
    with pytest.raises(ConfigError, match=r"model\.flow_window.*odd"):
        parse_config(data, "cfg.yaml")
