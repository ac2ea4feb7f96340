"""Model and training configuration: plain data, loaded from YAML and stored in checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration value a user supplied is invalid; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the exported graph takes: uint8 frames already resized to `height` x `width`.

    With `motion`, each sample carries the previous frame too (channels = 2 * frame channels);
    the model turns the pair into an absolute-difference motion map itself.
    """

    height: int = Field(160, ge=32, le=2048)
    width: int = Field(240, ge=32, le=2048)
    color: bool = False
    motion: bool = True

    @property
    def frame_channels(self) -> int:
        return 3 if self.color else 1

    @property
    def channels(self) -> int:
        return self.frame_channels * (2 if self.motion else 1)


class MemoryConfig(_Strict):
    """Hopfield memory of one scale."""

    slots: int = Field(ge=2)
    dim: int = Field(128, ge=4)
    beta: float = Field(8.0, gt=0)


class AnoMemConfig(_Strict):
    """The AnoMem network: encoder, per-scale memories, deviation maps and the stage-2 score."""

    name: Literal["anomem"] = "anomem"
    encoder: Literal["efficientnet_lite0", "resnet18"] = "efficientnet_lite0"
    pretrained: bool = True
    freeze_encoder: bool = False
    scales: tuple[int, ...] = (0, 1, 2)
    memories: tuple[MemoryConfig, ...] = (
        MemoryConfig(slots=256),
        MemoryConfig(slots=512),
        MemoryConfig(slots=1024),
    )
    motion_features: Literal["diff", "flow"] = "flow"
    motion_weight: float = Field(2.0, ge=0)
    proj_dim: int = Field(128, ge=8)
    topk: int = Field(8, ge=1)
    scale_weights: tuple[float, ...] | None = None
    map_sigma: float = Field(1.0, ge=0)
    score: Literal["oneclass", "svdd", "classifier"] = "oneclass"
    per_position_stats: bool = True
    std_shrinkage: float = Field(0.5, ge=0, le=1)

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, scales: tuple[int, ...]) -> tuple[int, ...]:
        if not scales or any(s not in (0, 1, 2) for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(
                "must be distinct values among 0, 1, 2 (encoder strides 8, 16, 32), e.g. [0, 1, 2]"
            )
        return scales

    @model_validator(mode="after")
    def _check_lengths(self) -> AnoMemConfig:
        if len(self.memories) != 3:
            raise ValueError("memories must list 3 entries, one per encoder scale (unused ones are ignored)")
        if self.scale_weights is not None and len(self.scale_weights) != len(self.scales):
            raise ValueError("scale_weights must have one weight per entry of scales")
        return self


class TrainConfig(_Strict):
    """Stage 1 (representation + memory) and stage 2 (statistics, detector) training settings."""

    seed: int = 0
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=2)
    frames_per_epoch: int | None = Field(1200, ge=2)
    lr: float = Field(2e-3, gt=0)
    # Fine-tuning a pretrained encoder wants a far smaller step than the freshly initialised memories.
    encoder_lr: float | None = Field(
        1e-4, gt=0, description="encoder learning rate when it trains (None: lr)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.3, gt=0)
    w_contrastive: float = Field(1.0, ge=0)
    w_memory_contrastive: float = Field(1.0, ge=0)
    w_fit: float = Field(10.0, ge=0)
    w_variance: float = Field(1.0, ge=0)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    detector_epochs: int = Field(10, ge=1)
    detector_lr: float = Field(1e-3, gt=0)
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    false_alarm_rate: float = Field(0.01, gt=0, lt=1)
    smoothing_frames: int = Field(8, ge=1)
    num_threads: int | None = None


class ExperimentConfig(_Strict):
    """Everything `anomon train` needs besides the data path."""

    input: InputSpec = InputSpec()
    model: AnoMemConfig = AnoMemConfig()
    train: TrainConfig = TrainConfig()


def _error_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{source}: field '{field}': {first['msg']}"


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raises ConfigError naming the first bad field."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_error_line(err, source)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the defaults) and apply dotted-key overrides like {"train.epochs": 2}."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping with input/model/train sections")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(data, source)
