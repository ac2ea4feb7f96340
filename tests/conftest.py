"""Shared fixtures: a tiny generated scene in the UCSD Ped2 layout."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.config import ExperimentConfig, parse_config

TINY = {
    "input": {"height": 32, "width": 48, "motion": True},
    "model": {
        "encoder": "resnet18",
        "pretrained": False,
        "freeze_encoder": False,
        "memories": [{"slots": 16, "dim": 16}, {"slots": 16, "dim": 16}, {"slots": 16, "dim": 16}],
        "proj_dim": 16,
        "topk": 4,
    },
    "train": {
        "epochs": 2,
        "batch_size": 8,
        "frames_per_epoch": 32,
        "detector_epochs": 2,
        "lr": 1e-3,
        "encoder_lr": None,
        "holdout_fraction": 0.35,  # 26 of the 72 training frames: a calibration needs 25
    },
}


TINY_DAAD = {
    "input": {"height": 32, "width": 48, "motion": True},
    "model": {
        "name": "daad",
        "widths": [8, 16, 32],
        "memory_stages": [2, 3],
        "block_size": 8,
        "slots": 32,
        "discriminator_widths": [8, 16],
        "map_stride": 4,
        "topk": 4,
    },
    "train": {"epochs": 2, "batch_size": 8, "frames_per_epoch": 48, "lr": 2e-3, "holdout_fraction": 0.35},
}


def assert_onnx_matches_torch(model: torch.nn.Module, channels: int, path: Path) -> None:
    """Export `model` (batch 2) and check ONNX Runtime scores another batch size as PyTorch does."""
    x = torch.randint(0, 256, (2, channels, 32, 48), dtype=torch.uint8)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["frames"],
        output_names=["score", "anomaly_map"],
        dynamic_axes={"frames": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = torch.randint(0, 256, (5, channels, 32, 48), dtype=torch.uint8)
    score, heatmap = session.run(None, {"frames": frames.numpy()})
    with torch.no_grad():
        ref_score, ref_map = model(frames)
    # fp32 on both sides; differences come from summation order only.
    np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(heatmap, ref_map.numpy(), rtol=1e-4, atol=1e-4)


def tiny_daad_config(**model_overrides: object) -> ExperimentConfig:
    data = json.loads(json.dumps(TINY_DAAD))
    data["model"].update(model_overrides)
    return parse_config(data)


def tiny_config(**model_overrides: object) -> ExperimentConfig:
    data = json.loads(json.dumps(TINY))
    data["model"].update(model_overrides)
    return parse_config(data)


def _scene(
    frames: int, anomalous_from: int | None, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Grey street, a small walker drifting right; from `anomalous_from` on, a big fast block."""
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for t in range(frames):
        img = np.full((60, 90), 90, np.uint8) + rng.integers(0, 8, (60, 90), dtype=np.uint8)
        mask = np.zeros((60, 90), np.uint8)
        x = (10 + t) % 70
        img[25:37, x : x + 5] = 170
        anomalous = anomalous_from is not None and t >= anomalous_from
        if anomalous:
            bx = (5 * t) % 60
            img[10:30, bx : bx + 25] = 250
            mask[10:30, bx : bx + 25] = 255
        images.append(img)
        masks.append(mask)
        labels.append(int(anomalous))
    return images, masks, labels


@pytest.fixture(scope="session")
def ped2_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Ped2-layout root: train/ (3 normal clips), test/ (2 clips with anomalies), labels.json, masks/."""
    root = tmp_path_factory.mktemp("ped2_like")
    for i in range(3):
        images, _, _ = _scene(24, None, seed=i)
        clip = root / "train" / f"{i + 1:02d}"
        clip.mkdir(parents=True)
        for t, img in enumerate(images):
            cv2.imwrite(str(clip / f"{t:03d}.jpg"), img)
    labels = {}
    for i in range(2):
        images, masks, lab = _scene(24, anomalous_from=10 + 4 * i, seed=10 + i)
        name = f"{i + 1:02d}"
        (root / "test" / name).mkdir(parents=True)
        (root / "masks" / name).mkdir(parents=True)
        for t, (img, mask) in enumerate(zip(images, masks, strict=True)):
            cv2.imwrite(str(root / "test" / name / f"{t:03d}.jpg"), img)
            cv2.imwrite(str(root / "masks" / name / f"{t:03d}.png"), mask)
        labels[name] = lab
    (root / "labels.json").write_text(json.dumps(labels))
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(ped2_like: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, calibrated tiny AnoMem checkpoint trained on `ped2_like` (seconds)."""
    from model.pipeline import train

    out = tmp_path_factory.mktemp("tiny_ckpt") / "tiny.safetensors"
    train(ped2_like, out, tiny_config())
    return out


@pytest.fixture(scope="session")
def tiny_daad_checkpoint(ped2_like: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, calibrated tiny DAAD checkpoint trained on `ped2_like` (seconds)."""
    from model.pipeline import train

    out = tmp_path_factory.mktemp("tiny_daad_ckpt") / "tiny_daad.safetensors"
    train(ped2_like, out, tiny_daad_config())
    return out


PED2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucsd_ped2"
ARTIFACTS = Path(__file__).resolve().parents[1] / "benchmarks" / "artifacts"
PED2_CHECKPOINT = ARTIFACTS / "anomem_ped2.safetensors"
# Both committed Ped2 checkpoints: everything downstream of training must work for either model.
PED2_CHECKPOINTS = [PED2_CHECKPOINT, ARTIFACTS / "daad_ped2.safetensors"]
