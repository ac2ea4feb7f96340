"""Motion cues computed inside the scoring graph from a frame and its predecessor.

Everything here is convolutions, pooling and arithmetic, so it exports to ONNX and TensorRT with the
rest of the model and runs on the device that scores the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sobel_kernels() -> torch.Tensor:
    """The x and y Sobel kernels, scaled to intensity units per pixel: [2, 1, 3, 3]."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    return torch.stack([sobel, sobel.t()])[:, None]


def edge_margin(window: int) -> int:
    """Pixels from each frame edge within which a `window`-wide flow estimate reads the edge itself.

    Content entering the frame shows first in its outermost pixels and has no match in the previous
    frame there, which the flow equations read as fast motion (on Ped2's held-out normal clips the
    highest map values and speeds of a DAAD model were walkers entering at the left and right
    edges). A pixel's estimate reads pixels up to the window's radius away, plus one for the 3x3
    blur and one for the 3x3 derivatives: within that reach of the outermost pixel, it is not a speed.
    """
    return window // 2 + 3


def drop_edges(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Set the outer `margin` pixels of [B, C, H, W] maps to 0 (a slice and a pad: exports as such)."""
    if margin <= 0:
        return x
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(x[..., margin : h - margin, margin : w - margin], (margin, margin, margin, margin))


def _blur(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def _window_mean(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Mean over a `size` x `size` window around each pixel, clipped at the borders.

    The same as `_blur` (to float rounding), computed as two depthwise 1-D convolutions
    channels-last: for 5 channels of 160x240 and a 15 px window, about 2 ms a frame on one CPU
    thread against 50 ms for the 2-D average pool (one timing on this 2-core machine), and a plain
    grouped convolution for ONNX and TensorRT.
    """
    pad = size // 2
    # Built from Python ints (`channels` too, not x.shape) so that the ONNX export sees constant kernels.
    row = torch.ones(channels, 1, 1, size, dtype=x.dtype, device=x.device)
    column = torch.ones(channels, 1, size, 1, dtype=x.dtype, device=x.device)
    x = x.contiguous(memory_format=torch.channels_last)
    sums = F.conv2d(
        F.conv2d(x, row, padding=(0, pad), groups=channels), column, padding=(pad, 0), groups=channels
    )
    ones = x.new_ones(1, 1, x.shape[-2], x.shape[-1])
    counts = F.conv2d(F.conv2d(ones, row[:1], padding=(0, pad)), column[:1], padding=(pad, 0))
    return sums / counts


def lucas_kanade_speed(
    current: torch.Tensor, previous: torch.Tensor, sobel: torch.Tensor, window: int
) -> torch.Tensor:
    """Optical-flow speed (input pixels per frame) of frames in [0, 1]: [B, C, H, W] -> [B, 1, H, W].

    Lucas-Kanade: the flow (u, v) that best satisfies Ix u + Iy v + It = 0 in the least-squares sense
    over a `window` x `window` neighbourhood, from a lightly regularized 2x2 system per pixel. Unlike
    the normal flow (|It| / |grad I|, the component along the gradient only), the window lets the
    flow of an object's edges fill its textureless interior, so a cell's mean speed measures the
    object's speed. One scale, no warping: valid for displacements up to a few pixels, which covers
    pedestrians and cyclists at surveillance frame rates and these input sizes.
    """
    current = _blur(current, 3).mean(dim=1, keepdim=True)
    previous = _blur(previous, 3).mean(dim=1, keepdim=True)
    grad = F.conv2d(F.pad((current + previous) / 2, (1, 1, 1, 1), mode="replicate"), sobel)
    ix, iy = grad[:, :1], grad[:, 1:]
    it = current - previous
    products = [ix * ix, ix * iy, iy * iy, ix * it, iy * it]
    sums = _window_mean(torch.cat(products, dim=1), window, len(products))
    # Keeps flat regions (no gradient) at zero flow instead of dividing by ~0; small enough that a
    # low-contrast object (gradient energy ~1e-4 in [0, 1] intensity units) keeps its speed.
    reg = 1e-6
    a, b, c = sums[:, :1] + reg, sums[:, 1:2], sums[:, 2:3] + reg
    # Every term divided by the trace first: the same flow, but each factor stays of order one, so
    # half precision (FP16 graphs, TensorRT) does not underflow the determinant (~1e-12 on flat
    # ground, which made 0 / 0 in FP16 before this normalization: see tests/model/test_motion.py).
    trace = a + c
    a, b, c = a / trace, b / trace, c / trace
    d, e = sums[:, 3:4] / trace, sums[:, 4:5] / trace
    det = a * c - b * b
    u = (b * e - c * d) / det
    v = (b * d - a * e) / det
    return (u * u + v * v).add(1e-12).sqrt()


def pyramid_speed(
    current: torch.Tensor, previous: torch.Tensor, sobel: torch.Tensor, window: int, levels: int
) -> torch.Tensor:
    """Lucas-Kanade speed over `levels` resolutions: [B, C, H, W] frames in [0, 1] -> [B, 1, H, W].

    One level (`lucas_kanade_speed`) reads speeds up to about 3 px per frame and less beyond (a
    shift of 8 px reads 1.9: `benchmarks/lk_range.py`). Level l averages both frames over 2^l x 2^l
    pixels, where a displacement is 2^l times smaller, estimates there with a window of about half
    the size (`window // 2`, odd, at least 3) and scales the speed back; it replaces the finer
    estimate where it reads more than 2^l px (2 px at the finer level's resolution, inside the range
    that level measures). No warping: each level reads the two frames directly. A level's estimate
    within its own reach of the frame's edges (`edge_margin`) is left out, as the finest level's is by
    the model; a level too small to have an interior is not used.
    """
    speed = lucas_kanade_speed(current, previous, sobel, window)
    coarse_window = max(3, (window // 2) | 1)
    for level in range(1, levels):
        factor = 2**level
        height, width = current.shape[-2] // factor, current.shape[-1] // factor
        if min(height, width) <= 2 * edge_margin(coarse_window):
            break  # a level that small has no interior left: the finer levels stand
        coarse = lucas_kanade_speed(
            F.avg_pool2d(current, factor), F.avg_pool2d(previous, factor), sobel, coarse_window
        )
        coarse = drop_edges(coarse, edge_margin(coarse_window)) * factor
        coarse = F.interpolate(coarse, size=(speed.shape[-2], speed.shape[-1]), mode="nearest")
        speed = torch.where(coarse > factor, coarse, speed)
    return speed
