"""The cameras file: a site's cameras, where each one's frames come from and how it is alerted on.

    defaults:                    # every camera's, unless the camera sets its own
      fps: 10
      on_threshold: 0.5
    cameras:
      gate-1:
        source: rtsp://gate-1.local/stream
        resize: 640x360
        on_threshold: 0.6        # any per-camera setting of the service (monitor/camera.py)
      lobby:
        source: /footage/lobby.mp4

Its `defaults` and `cameras` have the shape of the service config's `cameras:` section, plus the
source fields (`SOURCE_FIELDS`): `anomon ingest --cameras FILE` publishes every camera's source
(monitor/supervisor.py), `anomon run --cameras FILE` takes the per-camera settings. Whether a source
can be opened is not checked here: a camera whose source is not there yet is retried by ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.config import ConfigError
from monitor.camera import CameraSettings, PerCameraSettings
from monitor.wire import is_camera_id

SOURCE_FIELDS = ("source", "fps", "resize", "jpeg_quality")
"""The fields ingest reads; every other field of a camera is a per-camera setting of the service."""
CAMERA_FIELDS = tuple(CameraSettings.model_fields)
DOCS = "docs/operations.md#cameras-file"


class SourceSettings(BaseModel):
    """How one camera's frames are published (the ingest fields of a camera entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    source: str = Field(
        min_length=1, description="video file, image folder, rtsp:// or http:// URL, or device index"
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="frames per second (default: the source's rate; 10 for an image folder); a live "
        "source drops frames above it",
    )
    resize: tuple[int, int] | None = Field(None, description="WIDTHxHEIGHT to resize frames to, e.g. 640x360")
    jpeg_quality: int = Field(90, ge=1, le=100)

    @field_validator("resize", mode="before")
    @classmethod
    def _width_x_height(cls, value: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        from monitor.ingest import parse_size  # ingest imports OpenCV: only once a file is read

        try:
            return parse_size(str(value))
        except ValueError:
            raise ValueError(f"{value!r} is not WIDTHxHEIGHT; write e.g. 640x360") from None


@dataclass(frozen=True)
class CamerasFile:
    """A parsed cameras file.

    Attributes:
        sources: camera id -> how its frames are published, in file order.
        settings: the per-camera settings, as the service config's `cameras` section.
    """

    sources: dict[str, SourceSettings]
    settings: PerCameraSettings


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (a copied camera block left with its old id)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice; rename one")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_cameras_file(path: str | Path) -> CamerasFile:
    """Read and check a cameras file.

    Raises:
        ConfigError: missing file, bad YAML, or a bad entry: one line naming the field and the fix.
    """
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"cameras file not found: {path}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    try:
        return parse_cameras(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_cameras(data: Any) -> CamerasFile:
    """The cameras file's content (`defaults` and `cameras` mappings) checked.

    Raises:
        ConfigError: the first bad entry, named with its dotted path.
    """
    data = {} if data is None else data
    if not isinstance(data, dict) or set(data) - {"defaults", "cameras"}:
        extra = sorted(set(data) - {"defaults", "cameras"}) if isinstance(data, dict) else []
        where = f" (not {', '.join(map(str, extra))})" if extra else ""
        raise ConfigError(f"the top level must be a mapping of defaults: and cameras:{where}; see {DOCS}")
    defaults = _section(data.get("defaults"), "defaults")
    cameras = _section(data.get("cameras"), "cameras")
    if "source" in defaults:
        raise ConfigError(
            "field 'defaults.source': a source belongs to one camera; move it under cameras.<id>"
        )
    source_defaults = {k: v for k, v in defaults.items() if k in SOURCE_FIELDS}
    sources: dict[str, SourceSettings] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for key, entry in cameras.items():
        # YAML reads `101:` as a number; as a camera id it is the text.
        camera_id = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        where = f"cameras.{camera_id}"
        if not isinstance(camera_id, str) or not is_camera_id(camera_id):
            raise ConfigError(
                f"camera id {camera_id!r}: use 1 to 128 characters of A-Z a-z 0-9 . _ - "
                "(it is the Kafka record key)"
            )
        entry = _section(entry, where)
        _check_field_names(entry, where)
        if "source" not in entry:
            raise ConfigError(
                f"field '{where}.source': missing; give the camera's video file, image folder, rtsp:// or "
                "http:// URL, or device index"
            )
        try:
            sources[camera_id] = SourceSettings.model_validate(
                source_defaults | {k: v for k, v in entry.items() if k in SOURCE_FIELDS}
            )
        except ValidationError as err:
            raise ConfigError(_first_error(err, where)) from None
        overrides[camera_id] = {k: v for k, v in entry.items() if k not in SOURCE_FIELDS}
    _check_field_names(defaults, "defaults")
    try:
        SourceSettings.model_validate({"source": "-", **source_defaults})
    except ValidationError as err:
        raise ConfigError(_first_error(err, "defaults")) from None
    try:
        settings = PerCameraSettings.model_validate(
            {"defaults": {k: v for k, v in defaults.items() if k not in SOURCE_FIELDS}, "cameras": overrides}
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if not field:  # a camera's merged settings: the message starts with `cameras.<id>.<field>: `
            field, _, message = message.partition(": ")
        raise ConfigError(f"field '{field}': {message}") from None
    return CamerasFile(sources=sources, settings=settings)


def _section(value: Any, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"field '{where}': expected a mapping of fields, not {type(value).__name__}; see {DOCS}"
        )
    return value


def _check_field_names(entry: dict[Any, Any], where: str) -> None:
    for name in entry:
        if name not in SOURCE_FIELDS and name not in CAMERA_FIELDS:
            raise ConfigError(
                f"field '{where}.{name}': unknown; a camera takes {', '.join(SOURCE_FIELDS)} and the "
                f"per-camera settings ({', '.join(CAMERA_FIELDS)}); see {DOCS}"
            )


def _first_error(err: ValidationError, prefix: str) -> str:
    first = err.errors()[0]
    path = ".".join([prefix, *(str(p) for p in first["loc"])])
    return f"field '{path}': {str(first['msg']).removeprefix('Value error, ')}"
