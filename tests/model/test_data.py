from pathlib import Path

import cv2
import numpy as np
import pytest

from model.config import InputSpec
from model.data import Clip, DataError, holdout_size, load_clips, split_holdout, with_motion


def test_ped2_layout_gives_labels_masks_and_model_size(ped2_like: Path) -> None:
    spec = InputSpec(height=32, width=48)
    train = load_clips(ped2_like, spec, split="train")
    test = load_clips(ped2_like, spec, split="test")
    assert [c.name for c in train] == ["01", "02", "03"] and all(c.labels is None for c in train)
    assert test[0].frames.shape == (24, 1, 32, 48) and test[0].frames.dtype == np.uint8
    assert test[0].labels is not None and test[0].labels.sum() == 14
    assert test[0].mask_paths is not None and len(test[0].mask_paths) == 24
    assert test[0].source_size == (60, 90)


def test_video_file_and_single_frame_folder(tmp_path: Path) -> None:
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for t in range(12):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, t * 4 : t * 4 + 8] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    (clip,) = load_clips(video, InputSpec(height=32, width=32, color=True))
    assert clip.frames.shape == (12, 3, 32, 32)
    assert clip.frames[0, 0].max() > 200 > clip.frames[0, 2].max()  # RGB order: red stays in channel 0
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(5):
        cv2.imwrite(str(folder / f"{t:03d}.png"), np.full((40, 40), t * 40, np.uint8))
    (clip,) = load_clips(folder, InputSpec(height=32, width=32))
    assert clip.frames.shape == (5, 1, 32, 32) and clip.frames[4].mean() == 160


def test_motion_pairs_each_frame_with_its_predecessor() -> None:
    frames = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1).repeat(2, axis=2)
    paired = with_motion(frames, InputSpec(height=32, width=32, motion=True))
    assert paired.shape == (4, 2, 2, 1)
    np.testing.assert_array_equal(paired[:, 1, 0, 0], [0, 0, 1, 2])
    assert with_motion(frames, InputSpec(height=32, width=32, motion=False)) is frames


def test_unreadable_paths_raise_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_clips(tmp_path / "nope", InputSpec())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no frames"):
        load_clips(tmp_path / "empty", InputSpec())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode"):
        load_clips(tmp_path / "bad", InputSpec())


def _clips(*lengths: int) -> list[Clip]:
    return [
        Clip(name=f"{i:02d}", frames=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1))
        for i, n in enumerate(lengths)
    ]


def test_the_hold_out_is_spread_over_the_footage_not_its_last_clips() -> None:
    clips = _clips(*[120] * 16)  # Ped2's train/ is 16 clips
    fit, held = split_holdout(clips, 0.1)
    assert sum(len(c.frames) for c in held) == holdout_size(1920, 0.1) == 192
    held_clips = {c.name.split("[")[0] for c in held}
    assert len(held_clips) >= 10 and {"00", "15"} & held_clips  # from the first clips to the last
    # Every frame is in exactly one part, and each part is consecutive frames of one clip.
    assert sum(len(c.frames) for c in fit + held) == 1920
    for piece in fit + held:
        assert np.all(np.diff(piece.frames[:, 0, 0, 0].astype(int)) == 1)


def test_a_held_out_segment_is_not_cut_by_a_clip_boundary() -> None:
    clips = _clips(48, 49, 12, 30, 52, 31, 20, 50, 40)  # Ped1-dev's training runs, about
    fit, held = split_holdout(clips, 0.1)
    assert sum(len(c.frames) for c in held) == 50
    assert [len(c.frames) for c in held] == [25, 25]  # no piece of a frame or two
    assert sum(len(c.frames) for c in fit + held) == sum(len(c.frames) for c in clips)
    # Two segments, the first moved into the second clip: it must not run into the second segment.
    for first in range(5, 56):
        fit, held = split_holdout(_clips(first, 60 - first), 0.7)
        assert sum(len(c.frames) for c in held) == 42, first
    # A clip shorter than a segment still gives its frames: the segment then spans the boundary.
    fit, held = split_holdout(_clips(6, 6, 6, 6, 6), 0.25)
    assert sum(len(c.frames) for c in held) == 8


def test_the_hold_out_keeps_enough_frames_to_calibrate_on_little_footage() -> None:
    assert holdout_size(382, 0.1) == 50  # Ped1-dev's normal runs: 10% would be 39
    assert holdout_size(100, 0.1) == 25  # at most a quarter of the footage
    assert holdout_size(3000, 0.1) == 300
    fit, held = split_holdout(_clips(100), 0)
    assert holdout_size(100, 0) == 0 and held == [] and [len(c.frames) for c in fit] == [100]


def test_a_benchmark_root_without_train_split_is_labelled_test_clips(tmp_path: Path) -> None:
    for t in range(3):
        (tmp_path / "test" / "01").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "test" / "01" / f"{t:03d}.jpg"), np.full((8, 8), 40 * t, np.uint8))
    (tmp_path / "labels.json").write_text('{"01": [0, 1, 1]}')
    spec = InputSpec(height=32, width=32)
    (clip,) = load_clips(tmp_path, spec, split="test")  # UCSD Ped1-dev's layout
    assert clip.labels is not None and clip.labels.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="has no train/ split"):
        load_clips(tmp_path, spec, split="train")
