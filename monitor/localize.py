"""Localization: a model's low-resolution anomaly map to boxes in source-frame pixels.

The model sees frames resized (stretched) from the source to its input size, so its map covers the
whole source frame; boxes are mapped back by the same stretch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from model.calibration import Calibration

# Bilinear upsampling adds no detail beyond the map: 8 work pixels per map cell keep boxes within
# 1/8 of a cell of the full-resolution result at a fraction of the cost (1080p: ~1 ms, not ~25 ms).
WORK_PIXELS_PER_CELL = 8

Polygon = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Region:
    """One anomalous region of a frame.

    Attributes:
        bbox: (x0, y0, x1, y1) in source-frame pixels, end-exclusive: the region is
            `frame[y0:y1, x0:x1]`.
        score: the region's peak map value on the [0, 1] scale (0.5 = map threshold).
    """

    bbox: tuple[int, int, int, int]
    score: float


@dataclass(frozen=True)
class MapScale:
    """Maps raw anomaly-map values to [0, 1] with `threshold` at 0.5 (the logistic of `Calibration`).

    Attributes:
        threshold: raw map value above which a pixel is anomalous.
        scale: raw units per logistic unit; larger means a gentler rise around the threshold.
    """

    threshold: float
    scale: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"map threshold must be a finite number, got {self.threshold}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"map scale must be a positive finite number, got {self.scale}")

    @classmethod
    def from_calibration(cls, calibration: Calibration) -> MapScale:
        """The scale of a `Calibration` fitted on normal anomaly-map values."""
        return cls(threshold=calibration.threshold, scale=calibration.scale)

    def with_threshold(self, threshold: float | None) -> MapScale:
        """The same shape moved to another threshold (a per-camera override); None keeps this one."""
        return self if threshold is None else MapScale(threshold=threshold, scale=self.scale)

    def normalize(self, raw: np.ndarray | float) -> np.ndarray:
        """Logistic map of raw values to [0, 1]; monotonic."""
        z = (np.asarray(raw, dtype=np.float64) - self.threshold) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass(frozen=True)
class Localization:
    """The regions of one frame.

    Attributes:
        regions: anomalous regions, highest score first.
        suppressed: the map was hot, but only inside ignored areas or in regions smaller than the
            minimum area, so the frame's anomaly is explained away.
    """

    regions: tuple[Region, ...]
    suppressed: bool


def _check_hw(frame_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"frame size must be positive (height, width), got {tuple(frame_hw)}")
    return h, w


def polygon_mask(polygons: Sequence[Polygon], frame_hw: tuple[int, int]) -> np.ndarray:
    """Boolean HxW mask, True inside any polygon; points are (x, y) in source pixels.

    Parts of a polygon outside the frame are clipped; polygons may overlap.
    """
    h, w = _check_hw(frame_hw)
    mask = np.zeros((h, w), np.uint8)
    for points in polygons:
        pts = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)
        if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] != 2:
            raise ValueError(f"a polygon needs at least 3 (x, y) points, got {np.asarray(points).tolist()}")
        cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def work_grid(map_hw: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) at which a map of `map_hw` is localized for a source of `frame_hw`."""
    h, w = _check_hw(frame_hw)
    return min(h, map_hw[0] * WORK_PIXELS_PER_CELL), min(w, map_hw[1] * WORK_PIXELS_PER_CELL)


def mask_to_grid(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask over the whole frame to `grid_hw`; a grid cell is True if any of it is."""
    if mask.shape == grid_hw:
        return mask.astype(bool, copy=False)
    # INTER_AREA averages each cell's footprint, so any covered source pixel leaves it above zero.
    coverage = cv2.resize(mask.astype(np.float32), (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_AREA)
    return coverage > 0


def localize(
    anomaly_map: np.ndarray,
    frame_hw: tuple[int, int],
    scale: MapScale,
    min_area: float = 0.0,
    ignore_mask: np.ndarray | None = None,
    max_regions: int = 16,
) -> Localization:
    """Boxes around the hot parts of an anomaly map, in source-frame pixels.

    The map is upsampled (bilinear) over the whole frame, thresholded at `scale.threshold`, and split
    into 8-connected components. Non-finite map values count as cold: they carry no location.

    Args:
        anomaly_map: 2-D raw map from the model (any resolution; it covers the whole frame).
        frame_hw: source frame (height, width).
        scale: the map threshold and the [0, 1] scale of region scores.
        min_area: regions smaller than this many source pixels are dropped.
        ignore_mask: boolean mask over the whole frame (True = ignored), at source size or any other
            size covering the frame, e.g. the `work_grid` (no resize then). Ignored pixels never
            produce or enlarge a region.
        max_regions: keep at most this many regions, the highest-scoring ones.

    Returns:
        The regions, highest score first, and whether the map's hot area was all ignored or too small.
    """
    if anomaly_map.ndim != 2 or anomaly_map.size == 0:
        raise ValueError(f"anomaly map must be a non-empty 2-D array, got shape {anomaly_map.shape}")
    h, w = _check_hw(frame_hw)
    raw = np.asarray(anomaly_map, dtype=np.float32)
    finite = np.isfinite(raw)
    if not finite.any():
        return Localization((), False)
    if not finite.all():
        raw = np.where(finite, raw, min(float(raw[finite].min()), scale.threshold) - 1.0).astype(np.float32)
    # Bilinear values never exceed the map's maximum, so a cold map needs no upsampling.
    if float(raw.max()) <= scale.threshold:
        return Localization((), False)

    gh, gw = work_grid((raw.shape[0], raw.shape[1]), (h, w))
    up = cv2.resize(raw, (gw, gh), interpolation=cv2.INTER_LINEAR)
    hot = up > scale.threshold
    if not hot.any():
        return Localization((), False)
    if ignore_mask is not None:
        hot &= ~mask_to_grid(ignore_mask, (gh, gw))

    sx, sy = w / gw, h / gh
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hot.astype(np.uint8), connectivity=8)
    regions: list[tuple[float, int, Region]] = []
    for label in range(1, count):
        left, top, width, height, pixels = (int(v) for v in stats[label])
        area = pixels * sx * sy
        if area < min_area:
            continue
        box = (slice(top, top + height), slice(left, left + width))
        peak = float(up[box][labels[box] == label].max())
        bbox = (
            math.floor(left * sx),
            math.floor(top * sy),
            min(w, math.ceil((left + width) * sx)),
            min(h, math.ceil((top + height) * sy)),
        )
        regions.append((area, label, Region(bbox=bbox, score=float(scale.normalize(peak)))))
    # Highest score first; between equal scores the larger region, then a stable order.
    regions.sort(key=lambda item: (-item[2].score, -item[0], item[1]))
    kept = tuple(region for _, _, region in regions[:max_regions])
    return Localization(kept, suppressed=not kept)
