"""The service's configuration: defaults, then a YAML file, then ANOMON__* environment, then flags.

Environment overrides use `__` between levels, e.g. `ANOMON__BATCHING__MAX_BATCH=16` or
`ANOMON__KAFKA__BOOTSTRAP_SERVERS=kafka:9092`; values are read as YAML scalars. A bad value fails
at start with one line that names the dotted field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.config import ConfigError, read_yaml_mapping, set_dotted
from monitor.camera import PerCameraSettings
from monitor.cameras_file import load_cameras_file
from monitor.kafka_client import ConsumerSettings, KafkaSettings, ProducerSettings
from monitor.webhooks import WebhookSettings
from monitor.wire import MAX_FRAME_BYTES, Topics

ENV_PREFIX = "ANOMON__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which model to serve and on what."""

    artifact: Path | None = Field(
        None,
        description="exported folder (anomon export) or checkpoint file: the model of every camera (with "
        "store: of every camera without its own and without a store default)",
    )
    store: Path | None = Field(
        None, description="model store folder (anomon store): each camera scored by its own model"
    )
    engine_cache: Path | None = Field(
        None,
        description="TensorRT engine cache folder, writable by the service (default: the artifact's "
        "engines/ folder; set it when models are mounted read-only or come from a store)",
    )
    store_poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="how often the store is checked for new or changed models"
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    device: str | None = Field(None, description="cpu or cuda[:N]; default: a GPU when present")
    threads: int | None = Field(None, ge=1, description="CPU inference threads (per worker)")
    workers: int | Literal["auto"] = Field(
        "auto",
        description="batches scored at once, each on its own thread (onnxruntime and torch); auto: 2 "
        "on a CPU with 2 or more cores (its threads split the cores when threads is unset: 2 workers "
        "of 1 thread keep 2 cores busier than 1 worker of 2 threads), 1 on a GPU",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_or_1_to_16(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise ValueError(f"{value!r} is not a number of workers: set auto or 1 to 16")
        if not 1 <= int(value) <= 16:
            raise ValueError(f"{value} is out of range: set auto or 1 to 16")
        return int(value)


class BatchingSettings(_Section):
    """Micro-batching across cameras: a batch closes at max_batch frames or max_wait_ms."""

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    overlap: bool = Field(
        True, description="score the next batch while the previous one is published and committed"
    )


class IntakeSettings(_Section):
    """How frames are taken in."""

    mode: Literal["live", "replay"] = Field(
        "live", description="live drops frames older than max_frame_age_seconds; replay scores all"
    )
    max_frame_age_seconds: float = Field(2.0, gt=0)
    motion_max_gap_seconds: float = Field(
        0.5,
        gt=0,
        description="a motion model scores a frame without motion (paired with itself) when its "
        "camera's previous frame was captured more than this before it; below two frame intervals "
        "(e.g. 0.15 for 10 fps) it also catches single frames lost at the source (monitor/pairing.py); "
        "not used with motion_interval_seconds",
    )
    motion_interval_seconds: float | None = Field(
        None,
        gt=0,
        le=10,
        description="a motion model's frame is paired with its camera's frame captured closest to this "
        "long before (within half an interval either way; else it is scored without motion): 1 / the frame "
        "rate of the model's training footage (0.1 for Ped2's 10 fps), for cameras faster than that; "
        "null: the previous frame (cameras at the training rate)",
    )
    max_frame_bytes: int = Field(MAX_FRAME_BYTES, ge=1024)
    max_pixels: int = Field(3840 * 2160, ge=64, description="refuse larger images before decoding")
    decode_workers: int = Field(2, ge=1, le=64)


class ThumbnailSettings(_Section):
    """Small pictures of each camera's latest scored frame, for live views (`anomon console`)."""

    enabled: bool = True
    interval_seconds: float = Field(
        2.0, gt=0, le=3600, description="at most one thumbnail per camera per this many seconds"
    )
    max_side: int = Field(320, ge=32, le=2048, description="longest side in pixels")
    quality: int = Field(70, ge=20, le=100, description="JPEG quality")
    max_bytes: int = Field(60_000, ge=2048, description="size cap; the quality is lowered to fit")


class HttpSettings(_Section):
    """The metrics/health endpoint."""

    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 to expose it")
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")


class ServiceConfig(_Section):
    """Everything `anomon run` needs."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    topics: Topics = Field(default_factory=Topics)
    model: ModelSettings = Field(default_factory=ModelSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    cameras: PerCameraSettings = Field(default_factory=PerCameraSettings)
    thumbnails: ThumbnailSettings = Field(default_factory=ThumbnailSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Dotted overrides from ANOMON__SECTION__FIELD variables (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            out[name[len(ENV_PREFIX) :].lower().replace("__", ".")] = yaml.safe_load(raw) if raw else None
    return out


def load_service_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cameras_file: str | Path | None = None,
) -> ServiceConfig:
    """Build the configuration: defaults < YAML file < cameras file < environment < `overrides`.

    Args:
        path: the service YAML.
        overrides: dotted keys, e.g. {"batching.max_batch": 16}.
        environ: where ANOMON__* variables are read (default: os.environ).
        cameras_file: a cameras file (monitor/cameras_file.py) whose per-camera settings are laid over
            the YAML's `cameras` section, field by field.

    Raises:
        ConfigError: missing file, bad YAML, or an invalid field (named with its dotted path).
    """
    sections = "sections (kafka, model, batching, intake, cameras, ...)"
    data = read_yaml_mapping(path, sections) if path is not None else {}
    source = str(path) if path is not None else "configuration"
    if cameras_file is not None:
        _lay_over(data, load_cameras_file(cameras_file).settings, source)
    for dotted, value in {
        **env_overrides(os.environ if environ is None else environ),
        **(overrides or {}),
    }.items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: field '{field}': {message}") from None


def _lay_over(data: dict[str, Any], cameras: PerCameraSettings, source: str) -> None:
    """Set the fields a cameras file gives over the config's `cameras` section (defaults and each camera)."""
    section = data.setdefault("cameras", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: field 'cameras': expected the defaults: and cameras: sections")
    section["defaults"] = _merged(section.get("defaults"), cameras.defaults.model_dump(exclude_unset=True))
    per_camera = dict(section.get("cameras") or {})
    for camera_id, fields in cameras.cameras.items():
        per_camera[camera_id] = _merged(per_camera.get(camera_id), fields)
    section["cameras"] = per_camera


def _merged(base: Mapping[str, Any] | None, over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s fields; a section in both (`snapshot`) merges field by field."""
    out = dict(base or {})
    for key, value in over.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = {**out[key], **value} if nested else value
    return out
