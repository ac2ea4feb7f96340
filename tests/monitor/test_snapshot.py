"""Snapshots: valid JPEGs under the cap, heatmap only where hot, boxes drawn, errors named."""

import cv2
import numpy as np
import pytest

from monitor.localize import MapScale, Region
from monitor.snapshot import SnapshotError, render_snapshot

SCALE = MapScale(threshold=3.0, scale=1.0)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


def noisy_frame(hw: tuple[int, int], color: bool, seed: int = 0) -> np.ndarray:
    """Noise compresses badly, so byte caps bite."""
    rng = np.random.default_rng(seed)
    shape = (*hw, 3) if color else hw
    return rng.integers(0, 256, shape, dtype=np.uint8)


def hot_map() -> np.ndarray:
    m = np.zeros((20, 30), np.float32)
    m[4:10, 18:26] = 8.0  # rows 0.2-0.5, columns 0.6-0.87 of the frame
    return m


@pytest.mark.parametrize(("hw", "color"), [((240, 360), False), ((1080, 1920), True), ((480, 300), False)])
def test_snapshot_decodes_under_cap_and_side(hw: tuple[int, int], color: bool) -> None:
    jpeg = render_snapshot(noisy_frame(hw, color), hot_map(), [Region((10, 10, 60, 60), 0.9)], SCALE)
    image = decode(jpeg)
    assert len(jpeg) <= 200_000 and max(image.shape[:2]) <= 640
    # The aspect ratio survives the downscale.
    assert image.shape[1] / image.shape[0] == pytest.approx(hw[1] / hw[0], rel=0.02)


def test_small_cap_makes_a_smaller_snapshot() -> None:
    frame = noisy_frame((720, 1280), color=True)
    big = render_snapshot(frame, None, [], max_bytes=400_000)
    small = render_snapshot(frame, None, [], max_bytes=20_000)
    assert len(small) <= 20_000 < len(big)
    # Quality alone cannot get noise this small: the image itself shrank.
    assert max(decode(small).shape[:2]) < max(decode(big).shape[:2]) == 640


def test_impossible_cap_is_a_clear_error() -> None:
    with pytest.raises(SnapshotError, match=r"raise snapshot\.max_bytes"):
        render_snapshot(noisy_frame((240, 360), False), None, [], max_bytes=200)


def test_heatmap_only_where_hot_and_boxes_drawn() -> None:
    frame = np.full((200, 300), 128, np.uint8)
    box = Region((20, 120, 100, 190), 0.93)
    image = decode(render_snapshot(frame, hot_map(), [box], SCALE, quality=95)).astype(int)
    hot = image[60:90, 200:240]
    cold = image[20:40, 20:100]
    # A grey frame stays grey where the map is cold and turns coloured where it is hot.
    assert np.abs(cold - 128).max() < 8
    assert np.ptp(hot.mean(axis=(0, 1))) > 60
    # The box edge is red (BGR) on the grey frame.
    redness = image[150, 16:26, 2] - image[150, 16:26, :2].max(axis=1)
    assert redness.max() > 100
    inside = image[150, 40:80]
    assert np.abs(inside - 128).max() < 8


def test_bad_frames_are_named() -> None:
    with pytest.raises(ValueError, match="uint8"):
        render_snapshot(np.zeros((10, 10), np.float32), None, [])
    with pytest.raises(ValueError, match="HxWx3"):
        render_snapshot(np.zeros((10, 10, 4), np.uint8), None, [])
    with pytest.raises(ValueError, match="map_scale"):
        render_snapshot(np.zeros((10, 10), np.uint8), hot_map(), [])
