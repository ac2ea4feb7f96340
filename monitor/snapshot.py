"""Alert snapshots: the peak frame as a size-capped JPEG with the heatmap and boxes drawn."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from monitor.localize import MapScale, Region

HEAT_ALPHA = 0.45
BOX_COLOR = (0, 0, 255)  # BGR red: stands out on both the grey frame and the heatmap's hot colours
# Quality steps tried at each size before shrinking; below ~40 JPEG blocks hide the scene.
QUALITY_STEPS = (70, 55, 40)
SHRINK = 0.75
MIN_SIDE = 16


class SnapshotError(ValueError):
    """A snapshot cannot be made under the byte cap; the message names the setting to raise."""


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        raise ValueError(f"snapshot frame must be uint8 (a decoded image), got {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise ValueError(f"snapshot frame must be HxW (grey) or HxWx3 (BGR), got shape {frame.shape}")


def _draw(
    frame_bgr: np.ndarray,
    side: int,
    heat: np.ndarray | None,
    regions: Sequence[Region],
) -> np.ndarray:
    """The frame scaled so its longer side is `side`, with the heatmap and boxes drawn at that size."""
    h, w = frame_bgr.shape[:2]
    f = min(1.0, side / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    image = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA) if f < 1.0 else frame_bgr.copy()
    if heat is not None:
        p = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
        hot = p > 0.5
        if hot.any():
            colours = cv2.applyColorMap(np.clip(p * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
            blended = cv2.addWeighted(image, 1.0 - HEAT_ALPHA, colours, HEAT_ALPHA, 0.0)
            image[hot] = blended[hot]
    fx, fy = size[0] / w, size[1] / h
    thickness = max(2, round(min(size) / 240))
    font_scale = max(0.3, min(size) / 600)
    for region in regions:
        x0, y0, x1, y1 = region.bbox
        p0 = (int(x0 * fx), int(y0 * fy))
        p1 = (max(p0[0], int(x1 * fx) - 1), max(p0[1], int(y1 * fy) - 1))
        cv2.rectangle(image, p0, p1, BOX_COLOR, thickness)
        label = f"{region.score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Label above the box, or inside it when the box touches the top edge.
        ty = p0[1] - base - 1 if p0[1] - th - base - 1 >= 0 else p0[1] + th + 1
        cv2.rectangle(image, (p0[0], ty - th - 1), (p0[0] + tw + 1, ty + base), BOX_COLOR, cv2.FILLED)
        cv2.putText(image, label, (p0[0] + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1)
    return image


def render_snapshot(
    frame: np.ndarray,
    anomaly_map: np.ndarray | None,
    regions: Sequence[Region],
    map_scale: MapScale | None = None,
    *,
    max_side: int = 640,
    max_bytes: int = 200_000,
    quality: int = 85,
) -> bytes:
    """JPEG of a frame with the anomaly heatmap (only where the map is hot) and the region boxes.

    The frame is scaled down so its longer side is at most `max_side`; if the JPEG is over
    `max_bytes`, the quality is lowered, then the image shrunk, until it fits.

    Args:
        frame: decoded source frame, uint8 HxW (grey) or HxWx3 (BGR).
        anomaly_map: raw 2-D map covering the frame, or None for boxes only.
        regions: boxes in source-frame pixels with their [0, 1] scores.
        map_scale: the map threshold and scale; required with a map.
        max_side: longest side of the snapshot in pixels.
        max_bytes: the snapshot's size cap.
        quality: starting JPEG quality (1-100).

    Raises:
        SnapshotError: no size and quality fits under `max_bytes`.
    """
    bgr = _as_bgr(frame)
    heat: np.ndarray | None = None
    if anomaly_map is not None:
        if map_scale is None:
            raise ValueError("render_snapshot: a map_scale is needed to draw an anomaly map")
        if anomaly_map.ndim != 2:
            raise ValueError(f"anomaly map must be 2-D, got shape {anomaly_map.shape}")
        raw = np.nan_to_num(np.asarray(anomaly_map, np.float64), nan=-np.inf)
        heat = map_scale.normalize(raw).astype(np.float32)
    qualities = [quality, *(q for q in QUALITY_STEPS if q < quality)]
    side = min(max_side, max(bgr.shape[:2]))
    while True:
        image = _draw(bgr, side, heat, regions)
        for q in qualities:
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
            if not ok:
                raise SnapshotError("snapshot: the JPEG encoder failed")
            if encoded.size <= max_bytes:
                return encoded.tobytes()
        if side <= MIN_SIDE:
            raise SnapshotError(
                f"snapshot cannot fit in {max_bytes} bytes (still {encoded.size} bytes at {side} px, "
                f"quality {qualities[-1]}); raise snapshot.max_bytes"
            )
        side = max(MIN_SIDE, int(side * SHRINK))
