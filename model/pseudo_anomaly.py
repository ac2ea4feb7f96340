"""Synthetic anomalies on normal footage, to compare model settings without touching test labels.

Two kinds of event, each on held-out normal clips:
- `add_moving_patches`: a patch cut from the same scene moves across the frame much faster than
  anything in normal footage: an object with unusual motion, and (being a displaced patch) unusual
  appearance at its place.
- `add_foreign_objects`: an object that never appears in the scene (from another image collection)
  crosses it at anything from standing still to a few times walking pace: unusual appearance first.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

PasteFn = Callable[[int, int, int], None]  # (frame index, top, left): draw the event's object there


def add_moving_patches(
    frames: np.ndarray,
    rng: np.random.Generator,
    event_frames: tuple[int, int] = (15, 40),
    patch_fraction: tuple[float, float] = (0.08, 0.16),
    speed_fraction: tuple[float, float] = (0.015, 0.04),
    gap_frames: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert alternating normal stretches and fast-moving-patch events into a clip.

    Args:
        frames: uint8 [T, C, H, W] of one normal clip.
        rng: random generator (fix its seed for a repeatable validation set).
        event_frames: min/max length of an event in frames.
        patch_fraction: patch side as a fraction of the frame height.
        speed_fraction: patch speed per frame as a fraction of the frame width.
        gap_frames: min/max length of the normal stretch before each event (None: event_frames);
            (0, 1) with event_frames (T, T + 1) makes one event of a T-frame clip's whole length.

    Returns:
        (frames with events, 0/1 label per frame).
    """
    _, _, h, w = frames.shape

    def start_event(out: np.ndarray) -> tuple[int, int, float, float, PasteFn]:
        ph = max(4, int(h * rng.uniform(*patch_fraction)))
        pw = max(4, int(ph * rng.uniform(0.6, 1.4)))
        sy, sx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        y0, x0 = float(rng.integers(0, h - ph)), float(rng.integers(0, w - pw))

        def paste(t: int, y: int, x: int) -> None:
            out[t, :, y : y + ph, x : x + pw] = frames[t, :, sy : sy + ph, sx : sx + pw]

        return ph, pw, y0, x0, paste

    return _insert_events(frames, rng, event_frames, speed_fraction, start_event, gap_frames)


def add_foreign_objects(
    frames: np.ndarray,
    rng: np.random.Generator,
    objects: np.ndarray,
    event_frames: tuple[int, int] = (15, 40),
    height_fraction: tuple[float, float] = (0.12, 0.25),
    speed_fraction: tuple[float, float] = (0.0, 0.02),
    gap_frames: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert alternating normal stretches and events in which an object foreign to the scene crosses it.

    Unlike `add_moving_patches`, the anomaly is what the object is, not how fast it goes: each event
    pastes one image of `objects` (e.g. photographs of things that never appear in the scene),
    resized to about a person's height and blended in through a soft elliptical mask (so that no
    rectangle edge gives it away), moving in a straight line from standing still up to a few times
    walking pace.

    Args:
        frames: uint8 [T, C, H, W] of one normal clip.
        rng: random generator (fix its seed for a repeatable validation set).
        objects: uint8 [N, h, w] grayscale object images; one is drawn per event.
        event_frames: min/max length of an event in frames.
        height_fraction: object height as a fraction of the frame height.
        speed_fraction: object speed per frame as a fraction of the frame width.
        gap_frames: as in `add_moving_patches`.

    Returns:
        (frames with events, 0/1 label per frame).
    """
    _, _, h, w = frames.shape

    def start_event(out: np.ndarray) -> tuple[int, int, float, float, PasteFn]:
        source = objects[int(rng.integers(len(objects)))]
        oh = max(6, int(h * rng.uniform(*height_fraction)))
        ow = max(6, min(w - 1, int(oh * source.shape[1] / source.shape[0] * rng.uniform(0.7, 1.3))))
        patch = cv2.resize(source, (ow, oh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        yy, xx = np.mgrid[0:oh, 0:ow]
        r2 = ((yy + 0.5) / oh * 2 - 1) ** 2 + ((xx + 0.5) / ow * 2 - 1) ** 2
        alpha = np.clip((1.0 - r2) / 0.3, 0.0, 1.0).astype(np.float32)  # soft edge, opaque core
        y0, x0 = rng.uniform(0, h - oh), rng.uniform(0, w - ow)

        def paste(t: int, y: int, x: int) -> None:
            region = out[t, :, y : y + oh, x : x + ow].astype(np.float32)
            blended = alpha * patch + (1.0 - alpha) * region
            out[t, :, y : y + oh, x : x + ow] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

        return oh, ow, y0, x0, paste

    return _insert_events(frames, rng, event_frames, speed_fraction, start_event, gap_frames)


EVENT_KINDS = ("fast-patches", "foreign-objects")


def event_for_whole_clip(
    frames: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    objects: np.ndarray | None = None,
    **options: tuple[float, float],
) -> np.ndarray:
    """One event of `kind` (EVENT_KINDS: `add_moving_patches` or `add_foreign_objects`, which needs
    `objects`) that lasts the clip's whole length: a short held-out segment against its clean self.
    `options` go to that function (e.g. speed_fraction)."""
    whole = {"event_frames": (len(frames), len(frames) + 1), "gap_frames": (0, 1)}
    if kind == "fast-patches":
        out, labels = add_moving_patches(frames, rng, **whole, **options)  # type: ignore[arg-type]
    elif kind == "foreign-objects" and objects is not None:
        out, labels = add_foreign_objects(frames, rng, objects, **whole, **options)  # type: ignore[arg-type]
    else:
        raise ValueError(f"kind {kind!r}: expected one of {EVENT_KINDS} (foreign-objects needs objects)")
    assert labels.all()
    return out


def _insert_events(
    frames: np.ndarray,
    rng: np.random.Generator,
    event_frames: tuple[int, int],
    speed_fraction: tuple[float, float],
    start_event: Callable[[np.ndarray], tuple[int, int, float, float, PasteFn]],
    gap_frames: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternate normal stretches and events; each event's object moves in a straight line.

    `start_event(out)` draws one event's object and returns its (height, width, top, left) at the
    start and the function that draws it; the object then moves at a random speed and direction,
    clamped to the frame.
    """
    out = frames.copy()
    t_total, _, h, w = frames.shape
    labels = np.zeros(t_total, dtype=np.int64)
    gaps = gap_frames or event_frames
    t = int(rng.integers(*gaps))
    while t < t_total:
        length = min(int(rng.integers(*event_frames)), t_total - t)
        oh, ow, y0, x0, paste = start_event(out)
        speed = w * rng.uniform(*speed_fraction)
        angle = rng.uniform(0, 2 * np.pi)
        vy, vx = speed * np.sin(angle), speed * np.cos(angle)
        for i in range(length):
            y = int(np.clip(y0 + vy * i, 0, h - oh))
            x = int(np.clip(x0 + vx * i, 0, w - ow))
            paste(t + i, y, x)
            labels[t + i] = 1
        t += length + int(rng.integers(*gaps))
    return out, labels
