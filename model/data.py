"""Frame data: clips from frame folders, video files and the UCSD Ped2 layout, resized to the model input."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.config import InputSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


class DataError(ValueError):
    """A data path the user gave cannot be read as frames; the message names the path."""


@dataclass
class Clip:
    """One video of a fixed camera.

    Attributes:
        name: clip id (folder or file stem).
        frames: uint8 [T, C, H, W] at the model input size (C = 1 gray or 3 RGB).
        labels: optional 0/1 per frame (1 = anomalous).
        mask_paths: optional pixel ground-truth image per frame.
        source_size: (height, width) of the original frames.
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray | None = None
    mask_paths: list[Path] | None = None
    source_size: tuple[int, int] = (0, 0)


def resize_frame(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Convert a decoded HxW or HxWx3 (BGR) image to the model's [C, H, W] uint8 layout."""
    if image.ndim == 2:
        image = image if not spec.color else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif spec.color:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    resized = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return resized[None] if resized.ndim == 2 else np.ascontiguousarray(resized.transpose(2, 0, 1))


def with_motion(frames: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Stack each frame with its predecessor when the model uses motion: [T, C, H, W] -> [T, C', H, W].

    The first frame of a clip is paired with itself (no motion).
    """
    if not spec.motion:
        return frames
    previous = np.concatenate([frames[:1], frames[:-1]], axis=0)
    return np.concatenate([frames, previous], axis=1)


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot decode image {path}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _clip_from_images(name: str, files: list[Path], spec: InputSpec) -> Clip:
    first = _read_image(files[0])
    frames = np.stack([resize_frame(first, spec)] + [resize_frame(_read_image(p), spec) for p in files[1:]])
    return Clip(name=name, frames=frames, source_size=(first.shape[0], first.shape[1]))


def read_video(path: Path, spec: InputSpec) -> Clip:
    """Decode every frame of a video file with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"cannot open video {path}")
    frames: list[np.ndarray] = []
    size = (0, 0)
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            size = (image.shape[0], image.shape[1])
            frames.append(resize_frame(image, spec))
    finally:
        capture.release()
    if not frames:
        raise DataError(f"video {path} has no decodable frames")
    return Clip(name=path.stem, frames=np.stack(frames), source_size=size)


def is_ped2_root(path: Path) -> bool:
    """True for a folder in the UCSD Ped2 layout (train/, test/, labels.json)."""
    return (path / "train").is_dir() and is_labelled_root(path)


def is_labelled_root(path: Path) -> bool:
    """True for a benchmark folder: test/ clip folders with their frame labels in labels.json (and
    train/ when the benchmark has normal training clips: UCSD Ped2; UCSD Ped1-dev has none)."""
    return (path / "test").is_dir() and (path / "labels.json").is_file()


def _clip_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))


def load_clips(path: str | Path, spec: InputSpec, split: str = "train") -> list[Clip]:
    """Load every clip under `path`.

    Accepts a benchmark root (`is_labelled_root`: uses `split`, attaches labels and masks for the test
    split), a folder of frame folders, a single frame folder, a video file or a folder of video files.

    Raises:
        DataError: the path does not exist or holds no frames.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path not found: {root}")
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise DataError(
                f"{root} is not a video file ({', '.join(VIDEO_SUFFIXES)}) nor a folder of frames"
            )
        return [read_video(root, spec)]
    labels: dict[str, list[int]] = {}
    masks_root: Path | None = None
    if is_labelled_root(root):
        if split not in ("train", "test"):
            raise DataError(f"split must be train or test, not {split!r}")
        if not (root / split).is_dir():
            raise DataError(
                f"{root} has no {split}/ split (a benchmark root with test/ and labels.json only): "
                "give the normal footage's folder to train on"
            )
        if split == "test":
            labels = json.loads((root / "labels.json").read_text())
            masks_root = root / "masks" if (root / "masks").is_dir() else None
        root = root / split
    clips: list[Clip] = []
    if _image_files(root):
        clips.append(_clip_from_images(root.name, _image_files(root), spec))
    for folder in _clip_dirs(root):
        clip = _clip_from_images(folder.name, _image_files(folder), spec)
        if folder.name in labels:
            clip.labels = np.asarray(labels[folder.name], dtype=np.int64)
            if len(clip.labels) != len(clip.frames):
                raise DataError(f"{folder}: {len(clip.frames)} frames but {len(clip.labels)} labels")
        if masks_root is not None and (masks_root / folder.name).is_dir():
            clip.mask_paths = _image_files(masks_root / folder.name)
        clips.append(clip)
    for video in sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        clips.append(read_video(video, spec))
    if not clips:
        raise DataError(f"no frames found under {root} (expected image folders or video files)")
    return clips


HOLDOUT_MIN_FRAMES = 50
"""Frames `split_holdout` holds out at least while they are at most a quarter of the footage: twice a
calibration's minimum, so that little footage still gets a threshold with a moderate margin."""
HOLDOUT_SEGMENT_FRAMES = 20
"""Length of one held-out segment (2 s at 10 frames/s): long enough for the causal smoothing window."""


def holdout_size(total: int, fraction: float) -> int:
    """Frames `split_holdout` holds out of `total`: `fraction` of them, and at least HOLDOUT_MIN_FRAMES
    while that is at most a quarter of the footage; none when fraction is 0."""
    if fraction <= 0 or total < 2:
        return 0
    return min(total - 1, max(1, math.ceil(fraction * total), min(HOLDOUT_MIN_FRAMES, total // 4)))


def split_holdout(clips: list[Clip], fraction: float) -> tuple[list[Clip], list[Clip]]:
    """Hold out `holdout_size` frames of the footage to calibrate on, as
    segments of about HOLDOUT_SEGMENT_FRAMES spread evenly over the footage in its order: every part
    of the recording, its quiet and its busy times, is in the hold-out in proportion.

    Held-out segments and the training footage between them are separate clips, so no motion pair
    crosses a cut.
    """
    total = sum(len(c.frames) for c in clips)
    held = holdout_size(total, fraction)
    if held == 0:
        return clips, []
    segments = max(1, round(held / HOLDOUT_SEGMENT_FRAMES))
    bounds = np.cumsum([0, *(len(c.frames) for c in clips)])
    planned = []
    for k in range(segments):  # segment k is centred on the k-th of `segments` equal stretches
        length = held // segments + (1 if k < held % segments else 0)
        planned.append(
            (min(total - length, max(0, (2 * k + 1) * total // (2 * segments) - length // 2)), length)
        )
    mask = np.zeros(total, dtype=bool)
    for k, (start, length) in enumerate(planned):
        others = mask.copy()  # placed segments, and where the later ones are planned
        for later, later_length in planned[k + 1 :]:
            others[later : later + later_length] = True
        start = _inside_one_clip(start, length, bounds, others)
        mask[start : start + length] = True
    fit: list[Clip] = []
    holdout: list[Clip] = []
    start = 0
    for clip in clips:
        flags = mask[start : start + len(clip.frames)]
        start += len(clip.frames)
        cuts = [0, *(np.flatnonzero(np.diff(flags)) + 1).tolist(), len(flags)]
        for a, b in itertools.pairwise(cuts):
            piece = clip if (a, b) == (0, len(flags)) else _piece(clip, a, b)
            (holdout if flags[a] else fit).append(piece)
    return fit, holdout


def _inside_one_clip(start: int, length: int, bounds: np.ndarray, taken: np.ndarray) -> int:
    """`start` moved so that the held-out segment [start, start + length) lies inside the one clip
    (of those it overlaps, by `bounds`, the clip start offsets) that holds most of it, when that clip
    is long enough and the moved segment takes no frame already held out. A segment cut by a clip
    boundary would leave a piece of a frame or two, whose first frame has no motion pair."""
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    last = int(np.searchsorted(bounds, start + length - 1, side="right")) - 1
    if first == last:
        return start

    def overlap(c: int) -> int:
        return min(start + length, int(bounds[c + 1])) - max(start, int(bounds[c]))

    fitting = [c for c in range(first, last + 1) if bounds[c + 1] - bounds[c] >= length]
    if not fitting:
        return start
    best = max(fitting, key=overlap)
    moved = min(max(start, int(bounds[best])), int(bounds[best + 1]) - length)
    return start if taken[moved : moved + length].any() else moved


def _piece(clip: Clip, start: int, stop: int) -> Clip:
    """Frames [start, stop) of a clip as a clip of its own, named after where it lies."""
    return Clip(
        name=f"{clip.name}[{start}:{stop}]",
        frames=clip.frames[start:stop],
        labels=None if clip.labels is None else clip.labels[start:stop],
        mask_paths=None if clip.mask_paths is None else clip.mask_paths[start:stop],
        source_size=clip.source_size,
    )
