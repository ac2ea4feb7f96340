"""Frame data: clips from frame folders, video files and the UCSD Ped2 layout, resized to the model input."""

from __future__ import annotations

import json
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
    return (path / "train").is_dir() and (path / "test").is_dir() and (path / "labels.json").is_file()


def _clip_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))


def load_clips(path: str | Path, spec: InputSpec, split: str = "train") -> list[Clip]:
    """Load every clip under `path`.

    Accepts a Ped2 root (uses `split`, attaches labels and masks for the test split), a folder of
    frame folders, a single frame folder, a video file or a folder of video files.

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
    if is_ped2_root(root):
        if split not in ("train", "test"):
            raise DataError(f"split must be train or test, not {split!r}")
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
