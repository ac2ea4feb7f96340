"""Training pipeline behaviours beyond the CLI smoke test: resume, the unbalanced classifier."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import pipeline
from model.anomem import train as anomem_train
from model.checkpoint import load_checkpoint
from model.config import ConfigError
from model.pseudo_anomaly import EVENT_KINDS, add_foreign_objects, add_moving_patches, event_for_whole_clip
from tests.conftest import tiny_config


def test_interrupted_run_resumes_after_its_last_epoch(ped2_like: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run.safetensors"
    cfg = tiny_config()

    def crash(*args, **kwargs):  # a crash between stage 1 and stage 2 cannot be caused by real input
        raise RuntimeError("power cut")

    monkeypatch.setattr(anomem_train, "train_detector", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        pipeline.train(ped2_like, out, cfg)
    _, partial = load_checkpoint(out)
    assert not partial.complete
    assert partial.training["state"]["stage1_epochs_done"] == cfg.train.epochs
    losses_before = partial.training["state"]["stage1_losses"]
    monkeypatch.undo()
    meta = pipeline.train(ped2_like, out, cfg, resume=True)
    assert meta.complete and meta.calibration is not None
    assert meta.training["state"]["stage1_losses"] == losses_before  # stage 1 was not run again


def test_resume_refuses_a_checkpoint_of_another_config(ped2_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.safetensors"
    pipeline.train(ped2_like, out, tiny_config())
    with pytest.raises(ValueError, match="another config"):
        pipeline.train(ped2_like, out, tiny_config(topk=2), resume=True)


def test_training_stores_the_measured_object_window_and_resume_accepts_it(
    ped2_like: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run.safetensors"
    shutil.copyfile(tiny_checkpoint, out)
    _, meta = load_checkpoint(out)
    window = meta.config.model.object_window  # type: ignore[union-attr]
    assert window is not None and tiny_config().model.object_window is None
    again = pipeline.train(ped2_like, out, tiny_config(), resume=True)  # finished: nothing to do
    assert again.config == meta.config
    with pytest.raises(ValueError, match="another config"):
        pipeline.train(ped2_like, out, tiny_config(object_window=[window[0] + 1, window[1]]), resume=True)


def test_refit_changes_only_the_score_and_refitting_back_reproduces_training(
    ped2_like: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    base_tensors, base = load_checkpoint(tiny_checkpoint)
    fewer = tmp_path / "fewer.safetensors"
    pipeline.refit_score(tiny_checkpoint, ped2_like, {"model.topk": 1}, out=fewer)
    tensors, meta = load_checkpoint(fewer)
    assert meta.config.model.topk == 1  # type: ignore[union-attr]
    assert meta.version == f"{base.version}-refit"
    assert meta.training["refit"]["from_weights_sha256"] == base.weights_sha256
    assert [k for k in tensors if not torch.equal(tensors[k], base_tensors[k])] == ["term_stats"]
    assert meta.calibration is not None and base.calibration is not None
    assert meta.calibration.threshold != pytest.approx(base.calibration.threshold)

    back = tmp_path / "back.safetensors"
    # Back to the trained settings, the speed term's window measured again: what training fitted.
    back_to = {"model.topk": base.config.model.topk, "model.object_window": None}  # type: ignore[union-attr]
    pipeline.refit_score(fewer, ped2_like, back_to, out=back, version="v2")
    tensors, meta = load_checkpoint(back)
    assert meta.version == "v2" and meta.config == base.config
    torch.testing.assert_close(tensors["term_stats"], base_tensors["term_stats"])
    assert meta.calibration is not None
    assert meta.calibration.threshold == pytest.approx(base.calibration.threshold, rel=1e-4, abs=1e-4)


def test_refit_refuses_network_settings_other_footage_and_daad(
    ped2_like: Path, tiny_checkpoint: Path, tiny_daad_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.safetensors"
    with pytest.raises(
        ConfigError, match=r"--set model\.proj_dim: refit changes only the score.*anomon train"
    ):
        pipeline.refit_score(tiny_checkpoint, ped2_like, {"model.proj_dim": 8}, out=out)
    with pytest.raises(ConfigError, match=r"model\.object_window"):
        pipeline.refit_score(tiny_checkpoint, ped2_like, {"model.object_window": [0, 2]}, out=out)
    other = tmp_path / "other"
    shutil.copytree(ped2_like, other)
    frame = next((other / "train" / "01").iterdir())
    cv2.imwrite(str(frame), 255 - cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE))
    with pytest.raises(ValueError, match=r"not the footage .* was trained on"):
        pipeline.refit_score(tiny_checkpoint, other, {"model.topk": 1}, out=out)
    with pytest.raises(ValueError, match="this is a daad checkpoint"):
        pipeline.refit_score(tiny_daad_checkpoint, ped2_like, {}, out=out)
    assert not out.exists()


def test_unbalanced_setting_trains_a_classifier_on_labelled_anomalies(
    ped2_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clf.safetensors"
    meta = pipeline.train(ped2_like, out, tiny_config(score="classifier"), anomalies=ped2_like / "test")
    assert meta.complete and meta.config.model.score == "classifier"
    model, _ = pipeline.load_model(out)
    assert model.detector.head_kind == "classifier"
    with pytest.raises(ValueError, match="needs labelled anomalous frames"):
        pipeline.train(ped2_like, tmp_path / "x.safetensors", tiny_config(score="classifier"))


def test_pseudo_anomalies_mark_exactly_the_changed_frames() -> None:
    frames = torch.randint(0, 256, (120, 1, 32, 48), dtype=torch.uint8).numpy()
    changed, labels = add_moving_patches(frames, np.random.default_rng(0))
    differs = (changed != frames).reshape(len(frames), -1).any(axis=1)
    assert labels.sum() > 0 and (labels == 0).sum() > 0
    assert not differs[labels == 0].any()


def test_foreign_objects_mark_exactly_the_changed_frames_and_are_repeatable() -> None:
    frames = np.full((120, 1, 60, 90), 100, dtype=np.uint8)  # a flat scene: every paste shows
    objects = np.stack([np.full((32, 32), 250, np.uint8), np.full((32, 32), 10, np.uint8)])
    changed, labels = add_foreign_objects(frames, np.random.default_rng(0), objects)
    differs = (changed != frames).reshape(len(frames), -1).any(axis=1)
    assert labels.sum() > 0 and (labels == 0).sum() > 0
    np.testing.assert_array_equal(differs, labels.astype(bool))
    # The soft elliptical mask: the object's core is pasted opaque, the patch's corners are untouched.
    first = int(np.flatnonzero(labels)[0])
    ys, xs = np.nonzero(changed[first, 0] != 100)
    box = changed[first, 0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box[box.shape[0] // 2, box.shape[1] // 2] in (250, 10)
    assert box[0, 0] == 100 and box[-1, -1] == 100
    again, labels_again = add_foreign_objects(frames, np.random.default_rng(0), objects)
    np.testing.assert_array_equal(again, changed)
    np.testing.assert_array_equal(labels_again, labels)


def test_an_event_for_the_whole_clip_changes_every_frame() -> None:
    # A patch of the scene moved elsewhere shows on a textured scene; an object shows on a flat one too.
    frames = np.random.default_rng(1).integers(90, 110, (17, 1, 60, 90)).astype(np.uint8)
    objects = np.full((1, 32, 32), 250, np.uint8)
    for kind in EVENT_KINDS:
        changed = event_for_whole_clip(frames, np.random.default_rng(0), kind, objects)
        assert (changed != frames).reshape(len(frames), -1).any(axis=1).all(), kind
    with pytest.raises(ValueError, match="foreign-objects needs objects"):
        event_for_whole_clip(frames, np.random.default_rng(0), "foreign-objects")
