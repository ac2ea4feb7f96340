"""Train, calibrate and load models: what the `train` and `calibrate` commands do."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.anomem import train as anomem_train
from model.anomem.model import AnoMem
from model.calibration import Calibration, calibrate
from model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from model.config import AnoMemConfig, ConfigError, ExperimentConfig, parse_config, same_training, set_dotted
from model.daad import train as daad_train
from model.daad.model import DAAD
from model.data import Clip, load_clips, split_holdout, with_motion

AnomalyModel = AnoMem | DAAD


def build_model(cfg: ExperimentConfig, load_pretrained: bool = True) -> AnomalyModel:
    """The network a config describes, chosen by `model.name` (pretrained weights unless told not to)."""
    if isinstance(cfg.model, AnoMemConfig):
        return AnoMem(cfg.model, cfg.input, load_pretrained=load_pretrained)
    return DAAD(cfg.model, cfg.input)


def load_model(path: str | Path, score: str | None = None) -> tuple[AnomalyModel, CheckpointMeta]:
    """Rebuild a model from a checkpoint, in eval mode.

    Args:
        path: checkpoint file.
        score: serve another stage-2 score than the trained config's ("oneclass" or "svdd": both
            come from the same weights; AnoMem only); the returned metadata carries the changed config.
    """
    tensors, meta = load_checkpoint(path)
    if score is not None:
        if not isinstance(meta.config.model, AnoMemConfig):
            raise ValueError(f"{path}: another score can only be chosen for AnoMem, not {meta.name}")
        model_cfg = meta.config.model.model_copy(update={"score": score})
        meta = meta.model_copy(update={"config": meta.config.model_copy(update={"model": model_cfg})})
    model = build_model(meta.config, load_pretrained=False)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, meta


def model_inputs(clips: list[Clip], cfg: ExperimentConfig) -> np.ndarray:
    """Concatenate the model inputs of all clips (motion pairs never cross a clip boundary)."""
    return np.concatenate([with_motion(c.frames, cfg.input) for c in clips])


def fingerprint(clips: list[Clip]) -> str:
    """SHA-256 of the resized training frames and their clip names."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(clip.name.encode())
        digest.update(clip.frames.tobytes())
    return digest.hexdigest()


@torch.no_grad()
def score_inputs(
    model: torch.nn.Module, inputs: np.ndarray, batch_size: int = 32, desc: str = "scoring"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores [N] and anomaly maps [N, h, w] of uint8 model inputs."""
    model.eval()
    scores, maps = [], []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False):
        s, m = model(torch.from_numpy(inputs[start : start + batch_size]).to(device))
        scores.append(s.cpu().numpy())
        maps.append(m[:, 0].cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def calibrate_on(
    model: torch.nn.Module, clips: list[Clip], cfg: ExperimentConfig, false_alarm_rate: float
) -> tuple[Calibration, Calibration]:
    """Frame-score and anomaly-map calibrations of a model on normal clips."""
    raw, maps = score_inputs(model, model_inputs(clips, cfg), desc="calibration")
    return calibrate_outputs(raw, maps, false_alarm_rate)


def calibrate_outputs(
    raw: np.ndarray, maps: np.ndarray, false_alarm_rate: float
) -> tuple[Calibration, Calibration]:
    """Frame-score and anomaly-map calibrations from the outputs on held-out normal frames."""
    return calibrate(raw, false_alarm_rate), calibrate(
        maps.reshape(len(maps), -1).max(axis=1), false_alarm_rate
    )


def _fit_anomem(
    model: AnoMem,
    inputs: np.ndarray,
    cfg: ExperimentConfig,
    saved_state: dict[str, Any] | None,
    save_progress: Callable[[dict[str, Any]], None],
    anomalies: str | Path | None,
) -> dict[str, Any]:
    """Stage 1, stage-2 statistics and detector; returns the final training state."""
    state = anomem_train.TrainState(**(saved_state or {}))
    if saved_state:
        tqdm.write(f"resuming after stage-1 epoch {state.stage1_epochs_done}")
    anomem_train.train_stage1(model, inputs, cfg.train, state, on_epoch=lambda s: save_progress(asdict(s)))
    stage2_started = time.perf_counter()
    deviations = anomem_train.deviation_maps(model, inputs, desc="stage 2 statistics")
    anomem_train.fit_deviation_stats(model, deviations)
    anomem_train.fit_score(model, inputs, deviations)
    stacked = anomem_train.stacked_maps(model, deviations)
    anomalous = None
    if anomalies is not None:
        abnormal_inputs = model_inputs(load_clips(anomalies, cfg.input, split="train"), cfg)
        anomalous = anomem_train.stacked_maps(model, anomem_train.deviation_maps(model, abnormal_inputs))
    anomem_train.train_detector(model, stacked, cfg.train, state, anomalous)
    state.seconds += time.perf_counter() - stage2_started
    return asdict(state)


def _fit_daad(
    model: DAAD,
    inputs: np.ndarray,
    cfg: ExperimentConfig,
    saved_state: dict[str, Any] | None,
    save_progress: Callable[[dict[str, Any]], None],
    anomalies: str | Path | None,
) -> dict[str, Any]:
    """Adversarial autoencoder training, then the normal statistics of the score; returns the state."""
    if anomalies is not None:
        raise ValueError("--anomalies (the unbalanced setting) needs AnoMem with model.score 'classifier'")
    state = daad_train.TrainState(**(saved_state or {}))
    if saved_state:
        tqdm.write(f"resuming after epoch {state.epochs_done}")
    daad_train.train_daad(model, inputs, cfg.train, state, on_epoch=lambda s: save_progress(asdict(s)))
    stats_started = time.perf_counter()
    daad_train.fit_normal_stats(model, inputs)
    state.seconds += time.perf_counter() - stats_started
    return asdict(state)


def train(
    data: str | Path,
    out: str | Path,
    cfg: ExperimentConfig,
    version: str | None = None,
    resume: bool = False,
    anomalies: str | Path | None = None,
    device: str = "cpu",
) -> CheckpointMeta:
    """Train the configured model (AnoMem or DAAD) on normal footage and write a calibrated checkpoint.

    Args:
        data: normal footage (Ped2 root = its train split, frame folders or videos); segments spread
            over it (`split_holdout`, `train.holdout_fraction`) are held out to calibrate on.
        out: checkpoint path; also the resume point, rewritten after every training epoch.
        cfg: the experiment config; `cfg.model.name` picks the model.
        version: model version string (default: data folder name and today's date).
        resume: continue from `out` when it holds an unfinished run of the same config.
        anomalies: optional frames of labelled anomalies (unbalanced setting; AnoMem with score
            'classifier').
        device: torch device to train on ("cpu", "cuda"); the checkpoint is device-independent.
    """
    clips = load_clips(data, cfg.input, split="train")
    fit_clips, holdout = split_holdout(clips, cfg.train.holdout_fraction)
    return train_clips(
        fit_clips,
        holdout,
        out,
        cfg,
        version=version or f"{Path(data).name}-{dt.date.today().isoformat()}",
        resume=resume,
        anomalies=anomalies,
        device=device,
    )


def train_clips(
    fit_clips: list[Clip],
    holdout: list[Clip],
    out: str | Path,
    cfg: ExperimentConfig,
    version: str,
    resume: bool = False,
    anomalies: str | Path | None = None,
    device: str = "cpu",
    source: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Train on clips already split, calibrate on `holdout` (empty: on the training frames), write `out`.

    What `train` does after reading its footage, for footage that comes from elsewhere (`anomon learn`
    reads it from a camera's stream). The data fingerprint covers both lists.

    Args:
        fit_clips: normal clips to train on (motion pairs never cross a clip boundary).
        holdout: normal clips to calibrate the threshold on.
        out, cfg, version, resume, anomalies, device: as for `train`.
        source: where the footage came from, recorded in the checkpoint's `training.source`.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    inputs = model_inputs(fit_clips, cfg)
    tqdm.write(f"training on {len(inputs)} frames from {len(fit_clips)} clips; {len(holdout)} clips held out")
    model = build_model(cfg)
    saved_state: dict[str, Any] | None = None
    meta = CheckpointMeta(
        name=cfg.model.name,
        version=version,
        config=cfg,
        data_fingerprint=fingerprint(fit_clips + holdout),
        complete=False,
    )
    if resume and Path(out).is_file():
        tensors, previous = load_checkpoint(out)
        if not same_training(cfg, previous.config) or previous.data_fingerprint != meta.data_fingerprint:
            raise ValueError(f"{out} was trained with another config or data; remove it or drop --resume")
        if previous.complete:
            tqdm.write(f"{out} is already complete; nothing to resume")
            return previous
        model.load_state_dict(tensors, strict=True)
        saved_state = previous.training.get("state", {})
    model.to(device)

    def save_progress(state: dict[str, Any]) -> None:
        save_checkpoint(out, model.state_dict(), meta.model_copy(update={"training": {"state": state}}))

    if isinstance(model, AnoMem):
        state = _fit_anomem(model, inputs, cfg, saved_state, save_progress, anomalies)
    else:
        state = _fit_daad(model, inputs, cfg, saved_state, save_progress, anomalies)
    calibration_started = time.perf_counter()
    calib_clips = holdout or fit_clips
    calibration, map_calibration = calibrate_on(model, calib_clips, cfg, cfg.train.false_alarm_rate)
    state["seconds"] += time.perf_counter() - calibration_started
    meta = meta.model_copy(
        update={
            "config": cfg.model_copy(update={"model": model.cfg}),  # with what training measured
            "calibration": calibration,
            "map_calibration": map_calibration,
            "complete": True,
            "training": {
                "state": state,
                "train_frames": len(inputs),
                "calibration_frames": sum(len(c.frames) for c in calib_clips),
                "calibration_source": "held-out clips" if holdout else "training frames",
                "wall_seconds": time.perf_counter() - started,
                "threads": torch.get_num_threads(),
                "device": device,
                **({"source": source} if source else {}),
            },
        }
    )
    save_checkpoint(out, model.state_dict(), meta)
    return meta


def recalibrate(
    checkpoint: str | Path, data: str | Path, false_alarm_rate: float, out: str | Path | None = None
) -> Calibration:
    """Re-threshold a checkpoint on held-out normal footage and store the calibration in it."""
    model, meta = load_model(checkpoint)
    clips = load_clips(data, meta.config.input, split="train")
    calibration, map_calibration = calibrate_on(model, clips, meta.config, false_alarm_rate)
    meta = meta.model_copy(update={"calibration": calibration, "map_calibration": map_calibration})
    save_checkpoint(out or checkpoint, model.state_dict(), meta)
    return calibration


# The one-class score's settings: they decide the term statistics and the threshold, which training
# fits after stage 1, and nothing the network learned.
SCORE_FIELDS = ("topk", "object_window", "score_weights")


def refit_score(
    checkpoint: str | Path,
    data: str | Path,
    overrides: dict[str, Any],
    out: str | Path | None = None,
    version: str | None = None,
) -> CheckpointMeta:
    """Refit an AnoMem checkpoint's one-class score under changed score settings, keeping its network.

    What training does after stage 1 for the score, on the same split of the same footage: measure
    `object_window` when the settings leave it unset, fit the term statistics on the training frames
    and calibrate on the held-out clips (at the checkpoint's false-alarm rate). So one network can
    be served, and compared, under other score settings without retraining.

    Args:
        checkpoint: a finished AnoMem checkpoint.
        data: the footage it was trained on (checked against its fingerprint).
        overrides: dotted `model.*` score settings (SCORE_FIELDS), e.g. {"model.topk": 4}.
        out: where to write (default: in place).
        version: the refitted model's version (default: the checkpoint's with "-refit").
    """
    tensors, meta = load_checkpoint(checkpoint)
    if not isinstance(meta.config.model, AnoMemConfig):
        raise ValueError(
            f"{checkpoint}: refit changes AnoMem's one-class score; this is a {meta.name} checkpoint"
        )
    if not meta.complete:
        raise ValueError(f"{checkpoint}: training did not finish; finish it with anomon train --resume")
    allowed = {f"model.{name}" for name in SCORE_FIELDS}
    for key in overrides:
        if key not in allowed:
            raise ConfigError(
                f"--set {key}: refit changes only the score's settings ({', '.join(sorted(allowed))}); "
                "anything else changes the network: train again with anomon train"
            )
    fields = meta.config.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(fields, key, value)
    cfg = parse_config(fields, "--set")
    clips = load_clips(data, cfg.input, split="train")
    fit_clips, holdout = split_holdout(clips, cfg.train.holdout_fraction)
    if fingerprint(fit_clips + holdout) != meta.data_fingerprint:  # as train_clips takes it
        raise ValueError(
            f"{data} is not the footage {checkpoint} was trained on (its fingerprint differs): "
            "the score's statistics are fitted on the training frames"
        )
    model = build_model(cfg, load_pretrained=False)
    model.load_state_dict(tensors, strict=True)
    assert isinstance(model, AnoMem)
    inputs = model_inputs(fit_clips, cfg)
    anomem_train.fit_score(model, inputs, anomem_train.deviation_maps(model, inputs, desc="deviations"))
    rate = meta.calibration.false_alarm_rate if meta.calibration else cfg.train.false_alarm_rate
    calibration, map_calibration = calibrate_on(model, holdout or fit_clips, cfg, rate)
    meta = meta.model_copy(
        update={
            "version": version or f"{meta.version}-refit",
            "config": cfg.model_copy(update={"model": model.cfg}),
            "calibration": calibration,
            "map_calibration": map_calibration,
            "training": {
                **meta.training,
                "refit": {
                    "from_version": meta.version,
                    "from_weights_sha256": meta.weights_sha256,
                    "overrides": overrides,
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
            },
        }
    )
    save_checkpoint(out or checkpoint, model.state_dict(), meta)
    return meta
