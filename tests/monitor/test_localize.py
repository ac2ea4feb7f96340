"""Localization on synthetic maps: boxes land where the blob is, for any source size."""

import cv2
import numpy as np
import pytest

from model.calibration import Calibration
from monitor.localize import MapScale, localize, mask_to_grid, polygon_mask, work_grid

SCALE = MapScale(threshold=3.0, scale=1.0)
MAP_HW = (20, 30)


def blob_map(frame_hw: tuple[int, int], rect: tuple[int, int, int, int], peak: float = 8.0) -> np.ndarray:
    """A 20x30 map that a model would give for a hot rectangle (x0, y0, x1, y1) in source pixels."""
    truth = np.zeros(frame_hw, np.float32)
    x0, y0, x1, y1 = rect
    truth[y0:y1, x0:x1] = 1.0
    cover = cv2.resize(truth, (MAP_HW[1], MAP_HW[0]), interpolation=cv2.INTER_AREA)
    return (cover / cover.max() * peak).astype(np.float32)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


@pytest.mark.parametrize("frame_hw", [(240, 360), (158, 238), (480, 640), (1080, 1920), (60, 400), (12, 18)])
def test_region_covers_blob_at_its_source_location(frame_hw: tuple[int, int]) -> None:
    h, w = frame_hw
    rect = (w // 2, h // 4, w // 2 + max(2, w // 5), h // 4 + max(2, h // 4))
    found = localize(blob_map(frame_hw, rect), frame_hw, SCALE)
    assert len(found.regions) == 1 and not found.suppressed
    box = found.regions[0].bbox
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert iou(box, rect) > 0.8, (box, rect)
    assert 0.5 < found.regions[0].score <= 1.0


def test_two_blobs_sorted_by_score_and_capped() -> None:
    hw = (240, 360)
    m = blob_map(hw, (20, 20, 80, 80), peak=5.0) + blob_map(hw, (240, 140, 320, 220), peak=9.0)
    both = localize(m, hw, SCALE).regions
    assert len(both) == 2
    assert both[0].score > both[1].score
    assert both[0].bbox[0] > 200 and both[1].bbox[0] < 100
    assert localize(m, hw, SCALE, max_regions=1).regions == both[:1]


def test_region_score_is_the_scaled_peak() -> None:
    hw = (160, 240)
    m = np.zeros(MAP_HW, np.float32)
    m[8:12, 10:14] = 6.0
    (region,) = localize(m, hw, SCALE).regions
    assert region.score == pytest.approx(float(SCALE.normalize(6.0)), abs=1e-3)


def test_ignore_polygon_suppresses_blob() -> None:
    hw = (480, 640)
    rect = (300, 100, 420, 220)
    m = blob_map(hw, rect)
    around = [(280, 80), (440, 80), (440, 240), (280, 240)]
    found = localize(m, hw, SCALE, ignore_mask=polygon_mask([around], hw))
    assert found.regions == () and found.suppressed


def test_half_ignored_blob_keeps_only_the_free_half() -> None:
    hw = (480, 640)
    m = blob_map(hw, (300, 100, 420, 220))
    left_half = [(0, 0), (360, 0), (360, 480), (0, 480)]
    (region,) = localize(m, hw, SCALE, ignore_mask=polygon_mask([left_half], hw)).regions
    assert region.bbox[0] >= 360 and region.bbox[2] > 400


def test_ignore_mask_on_work_grid_equals_source_mask() -> None:
    hw = (1080, 1920)
    m = blob_map(hw, (900, 300, 1300, 700))
    source = polygon_mask([[(1000, 0), (1920, 0), (1920, 1080), (1000, 1080)]], hw)
    grid = mask_to_grid(source, work_grid(MAP_HW, hw))
    assert grid.shape == work_grid(MAP_HW, hw) == (160, 240)
    assert localize(m, hw, SCALE, ignore_mask=source) == localize(m, hw, SCALE, ignore_mask=grid)


def test_min_area_drops_small_regions() -> None:
    hw = (240, 360)
    m = blob_map(hw, (20, 20, 44, 44)) + blob_map(hw, (200, 100, 320, 220))
    regions = localize(m, hw, SCALE).regions
    assert len(regions) == 2
    small_area = min((r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]) for r in regions)
    (kept,) = localize(m, hw, SCALE, min_area=small_area + 1).regions
    assert kept.bbox[0] >= 180
    only_small = localize(blob_map(hw, (20, 20, 44, 44)), hw, SCALE, min_area=small_area + 1)
    assert only_small.regions == () and only_small.suppressed


def test_cold_and_non_finite_maps_give_nothing() -> None:
    hw = (240, 360)
    cold = localize(np.full(MAP_HW, 2.9, np.float32), hw, SCALE)
    assert cold.regions == () and not cold.suppressed
    nan = localize(np.full(MAP_HW, np.nan, np.float32), hw, SCALE)
    assert nan.regions == () and not nan.suppressed
    m = blob_map(hw, (200, 100, 320, 220))
    m[0, 0], m[0, 1] = np.nan, np.inf  # broken cells far from the blob carry no location
    (region,) = localize(m, hw, SCALE).regions
    assert region.bbox[0] >= 150


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="2-D"):
        localize(np.zeros((1, 20, 30), np.float32), (240, 360), SCALE)
    with pytest.raises(ValueError, match="frame size"):
        localize(np.zeros(MAP_HW, np.float32), (0, 360), SCALE)
    with pytest.raises(ValueError, match="at least 3"):
        polygon_mask([[(0, 0), (10, 10)]], (20, 20))
    with pytest.raises(ValueError, match="map scale"):
        MapScale(threshold=1.0, scale=0.0)


def test_polygon_mask_fills_and_clips() -> None:
    mask = polygon_mask(
        [[(10, 10), (30, 10), (30, 20), (10, 20)], [(90, 90), (200, 90), (200, 200)]], (100, 100)
    )
    assert mask.dtype == bool and mask.shape == (100, 100)
    assert mask[15, 20] and not mask[5, 5] and mask[95, 99]
    assert 21 * 11 <= mask[:50].sum() <= 21 * 11 + 2


def test_map_scale_matches_calibration_shape() -> None:
    cal = Calibration(threshold=2.0, scale=0.5, false_alarm_rate=0.01, normal_median=1.0, frames=100)
    scale = MapScale.from_calibration(cal)
    values = np.linspace(-3, 8, 23)
    np.testing.assert_allclose(scale.normalize(values), cal.normalize(values))
    assert float(scale.normalize(2.0)) == 0.5
    moved = scale.with_threshold(4.0)
    assert float(moved.normalize(4.0)) == 0.5 and moved.scale == 0.5
    assert scale.with_threshold(None) is scale
