"""Kafka wire format, version 1: topic and header names, the output messages and their JSON Schemas.

This module is the one place that turns messages into bytes and back (`encode` / `decode`). The
JSON Schemas shipped in `monitor/schemas/` are generated from the definitions here
(`python -m monitor.wire` rewrites them) and a test keeps the two identical.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

# Default topic names; every one is configurable (see `Topics`).
FRAMES_TOPIC = "anomon.frames"
SCORES_TOPIC = "anomon.scores"
ALERTS_TOPIC = "anomon.alerts"
DEAD_LETTERS_TOPIC = "anomon.frames.dlq"
THUMBNAILS_TOPIC = "anomon.thumbnails"
FEEDBACK_TOPIC = "anomon.feedback"

# Headers of a frame record.
HEADER_CONTENT_TYPE = "content-type"
HEADER_FRAME_INDEX = "frame-index"
HEADER_CAPTURE_TS_NS = "capture-ts-ns"
HEADER_SCHEMA = "anomon-schema"
FRAME_SCHEMA_VERSION = "1"
# Headers a dead letter adds to the bad record's own.
HEADER_ERROR = "anomon-error"
HEADER_ERROR_DETAIL = "anomon-error-detail"
HEADER_SOURCE = "anomon-source"

JPEG = "image/jpeg"
PNG = "image/png"
CONTENT_TYPES = (JPEG, PNG)
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Default upper bound on a frame record's value (`max_frame_bytes`)."""

SCORE_SCHEMA: Final = "anomon.score/1"
ALERT_SCHEMA: Final = "anomon.alert/1"
THUMBNAIL_SCHEMA: Final = "anomon.thumbnail/1"
FEEDBACK_SCHEMA: Final = "anomon.feedback/1"

# Anchored patterns are shared by the JSON Schemas and the Python checks (`re.fullmatch`). `[0-9]`, not
# `\d`: Python's `\d` also matches non-ASCII digits.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
DECIMAL_PATTERN = r"^[0-9]{1,19}$"
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
SOURCE_PATTERN = r"^.+/[0-9]+/[0-9]+$"
BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
INT64_MAX = 2**63 - 1

_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Reason(StrEnum):
    """Why a frame record is bad: the `anomon-error` header of its dead letter."""

    BAD_KEY = "bad-key"
    BAD_HEADER = "bad-header"
    UNKNOWN_SCHEMA = "unknown-schema"
    BAD_CONTENT_TYPE = "bad-content-type"
    EMPTY = "empty"
    OVERSIZED = "oversized"
    UNDECODABLE = "undecodable"
    TOO_MANY_PIXELS = "too-many-pixels"
    INFERENCE_FAILED = "inference-failed"  # the runtime raised on this frame alone
    INVALID_SCORE = "invalid-score"  # the model returned NaN or infinity for this frame


class WireError(ValueError):
    """Bytes that are not a valid anomon message; the message names the field."""


class Topics(BaseModel):
    """Topic names (the defaults of wire format v1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: str = FRAMES_TOPIC
    scores: str = SCORES_TOPIC
    alerts: str = ALERTS_TOPIC
    dead_letters: str = DEAD_LETTERS_TOPIC
    thumbnails: str = THUMBNAILS_TOPIC
    feedback: str = FEEDBACK_TOPIC


def is_camera_id(value: str) -> bool:
    """True when `value` is a valid camera id: 1 to 128 chars of `[A-Za-z0-9._-]`."""
    return re.fullmatch(CAMERA_ID_PATTERN, value) is not None


# --- timestamps -----------------------------------------------------------------------------------


def datetime_from_ns(ns: int) -> datetime:
    """A Unix epoch time in ns (e.g. `capture-ts-ns`) as an aware UTC datetime, floored to the ms."""
    return _EPOCH + timedelta(milliseconds=ns // 1_000_000)


def format_ts(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, e.g. `2026-11-22T10:00:00.123Z`."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
    value = value.astimezone(UTC)
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"


def _to_timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        if re.fullmatch(TIMESTAMP_PATTERN, value) is None:
            raise ValueError(
                f"timestamp {value[:40]!r} is not RFC 3339 UTC with ms, e.g. 2026-11-22T10:00:00.123Z"
            )
        return datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
        # Floor to the ms so that a message equals itself after a round trip through JSON.
        value = value.astimezone(UTC)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    raise ValueError(f"expected a timestamp string or datetime, got {type(value).__name__}")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_timestamp),
    PlainSerializer(format_ts, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]
"""An aware UTC datetime on the wire as RFC 3339 with ms and `Z`."""

CameraId = Annotated[str, Field(pattern=CAMERA_ID_PATTERN, description="the record key of the frames")]
FrameIndex = Annotated[int, Field(ge=0, le=INT64_MAX)]
UnitScore = Annotated[float, Field(ge=0.0, le=1.0)]
Coordinate = Annotated[int, Field(ge=0)]


# --- output messages ------------------------------------------------------------------------------


class _Message(BaseModel):
    # Producers must not add fields to v1 (subscribers validate with additionalProperties: false);
    # NaN/inf are not JSON; every field is always written, so the wire schema requires them all.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        json_schema_serialization_defaults_required=True,
    )


class Region(_Message):
    """A localized anomalous region: `bbox` = [x1, y1, x2, y2] in source-frame pixels (x2 >= x1, y2 >= y1)."""

    bbox: tuple[Coordinate, Coordinate, Coordinate, Coordinate]
    score: UnitScore

    @model_validator(mode="after")
    def _ordered(self) -> Region:
        x1, y1, x2, y2 = self.bbox
        if x2 < x1 or y2 < y1:
            raise ValueError(f"bbox {list(self.bbox)} must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
        return self


class ModelInfo(_Message):
    """Which model scored the frame, e.g. anomem / ped2-2026-11-22 / onnxruntime / fp32."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=128)
    backend: str = Field(min_length=1, max_length=64)
    precision: str = Field(min_length=1, max_length=32)
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the weights, as `anomon store list` reports it: which model this is",
    )


class Latency(_Message):
    """Per-frame latencies in milliseconds."""

    queue: float = Field(ge=0.0, description="record timestamp to start of inference")
    inference: float = Field(ge=0.0, description="the model's share of its batch")
    end_to_end: float = Field(ge=0.0, description="capture to publish")


class ScoreMessage(_Message):
    """One processed frame (`anomon.scores`).

    `score` is normalized to [0, 1] with the calibrated threshold at 0.5; `raw_score` is the model's.
    """

    schema_: Literal["anomon.score/1"] = Field(SCORE_SCHEMA, alias="schema")
    camera_id: CameraId
    frame_index: FrameIndex
    capture_ts: Timestamp
    processed_ts: Timestamp
    score: UnitScore
    raw_score: float
    anomalous: bool
    regions: list[Region] = Field(default_factory=list)
    model: ModelInfo
    latency_ms: Latency


class AlertPeak(_Message):
    """The highest-scoring frame of an alert so far."""

    score: UnitScore
    frame_index: FrameIndex
    ts: Timestamp
    regions: list[Region] = Field(default_factory=list)


class Snapshot(_Message):
    """The peak frame with heatmap and boxes drawn, base64-encoded."""

    content_type: Literal["image/jpeg", "image/png"]
    data_b64: str = Field(pattern=BASE64_PATTERN)

    @classmethod
    def from_image(cls, content_type: Literal["image/jpeg", "image/png"], data: bytes) -> Snapshot:
        """Wrap encoded image bytes."""
        return cls(content_type=content_type, data_b64=base64.b64encode(data).decode("ascii"))

    def image_bytes(self) -> bytes:
        """The encoded image."""
        return base64.b64decode(self.data_b64)


# An end event carries its end time, start and update events carry null; JSON Schema says so too.
_END_TS_RULE: dict[str, Any] = {
    "if": {"properties": {"type": {"const": "end"}}},
    "then": {"properties": {"end_ts": {"type": "string"}, "end_reason": {"type": "string"}}},
    "else": {"properties": {"end_ts": {"type": "null"}, "end_reason": {"type": "null"}}},
}


EndReason = Literal["cleared", "stalled", "model_changed", "moved", "shutdown"]


class AlertMessage(_Message):
    """An alert lifecycle event (`anomon.alerts`): `start`, `update` (new peak) or `end`."""

    model_config = ConfigDict(json_schema_extra=_END_TS_RULE)

    schema_: Literal["anomon.alert/1"] = Field(ALERT_SCHEMA, alias="schema")
    type: Literal["start", "update", "end"]
    alert_id: UUID
    camera_id: CameraId
    start_ts: Timestamp
    end_ts: Timestamp | None = None
    frames: int = Field(ge=1, description="frames over the threshold so far")
    peak: AlertPeak
    snapshot: Snapshot | None = None
    model: ModelInfo
    end_reason: EndReason | None = Field(
        None,
        description="why an `end` event ended the alert (null on start and update): cleared (the score "
        "stayed under the off threshold for the cutoff), stalled (the camera sent no frame for the "
        "cutoff), model_changed (the camera's model was swapped), moved (its partition went to another "
        "instance), shutdown",
    )

    @model_validator(mode="after")
    def _end_ts_only_on_end(self) -> AlertMessage:
        if (self.type == "end") != (self.end_ts is not None):
            raise ValueError("end_ts is set on 'end' events and null on 'start' and 'update'")
        if (self.type == "end") != (self.end_reason is not None):
            raise ValueError("end_reason is set on 'end' events and null on 'start' and 'update'")
        return self


# A learning thumbnail (no model yet) has no score, no boxes and is not anomalous; JSON Schema says so too.
_LEARNING_RULE: dict[str, Any] = {
    "if": {"properties": {"model": {"type": "null"}}},
    "then": {
        "properties": {"score": {"type": "null"}, "anomalous": {"const": False}, "regions": {"maxItems": 0}}
    },
    "else": {"properties": {"score": {"type": "number"}}},
}


class ThumbnailMessage(_Message):
    """A small picture of a camera's latest frame (`anomon.thumbnails`), published every few seconds
    per camera for live views, longest side `thumbnails.max_side`.

    A scored frame comes with its score and model, heatmap and boxes drawn. A frame of a camera the
    service has no model for yet (`learning`) comes as the plain frame downsized, with `model` and
    `score` null, no regions and `anomalous` false.
    """

    model_config = ConfigDict(json_schema_extra=_LEARNING_RULE)

    schema_: Literal["anomon.thumbnail/1"] = Field(THUMBNAIL_SCHEMA, alias="schema")
    camera_id: CameraId
    frame_index: FrameIndex
    capture_ts: Timestamp
    score: UnitScore | None = Field(description="the frame's score; null: learning (no model yet)")
    anomalous: bool
    regions: list[Region] = Field(default_factory=list, description="boxes in source-frame pixels")
    model: ModelInfo | None = Field(description="the model that scored the frame; null: none yet (learning)")
    image: Snapshot

    @property
    def learning(self) -> bool:
        """The camera has no model yet: the frame was not scored."""
        return self.model is None

    @model_validator(mode="after")
    def _learning_is_unscored(self) -> ThumbnailMessage:
        if (self.model is None) != (self.score is None):
            raise ValueError("score and model are both set (a scored frame) or both null (learning)")
        if self.model is None and (self.regions or self.anomalous):
            raise ValueError("a learning thumbnail (model null) has no regions and anomalous false")
        return self


Verdict = Literal["acknowledged", "false_alarm", "real"]


class FeedbackMessage(_Message):
    """An operator's verdict on an alert (`anomon.feedback`, keyed by camera). A `false_alarm`'s
    capture-time range is normal footage for the camera's next `anomon learn`."""

    schema_: Literal["anomon.feedback/1"] = Field(FEEDBACK_SCHEMA, alias="schema")
    alert_id: UUID
    camera_id: CameraId
    verdict: Verdict
    ts: Timestamp = Field(description="when the operator gave it")
    alert_start_ts: Timestamp
    alert_end_ts: Timestamp | None = Field(description="null while the alert is open")
    model: ModelInfo | None = Field(description="the model that raised the alert, if known")
    note: str = Field("", max_length=1000)


OutputMessage = Annotated[
    ScoreMessage | AlertMessage | ThumbnailMessage | FeedbackMessage, Field(discriminator="schema_")
]
AnyMessage = ScoreMessage | AlertMessage | ThumbnailMessage | FeedbackMessage
_OUTPUT_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(OutputMessage)


def encode(message: AnyMessage) -> bytes:
    """The record value of a message: compact UTF-8 JSON."""
    return message.model_dump_json().encode()


def decode(data: bytes | str) -> AnyMessage:
    """Parse a record value of the scores or alerts topic (picked by its `schema` field), strictly:
    no type coercion, as the JSON Schemas say.

    Raises:
        WireError: not JSON, an unknown schema or an invalid field (one line naming it).
    """
    try:
        return _OUTPUT_ADAPTER.validate_json(data, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:] or first["loc"]) or "(top level)"
        raise WireError(f"not an anomon message: field '{field}': {first['msg']}") from None


def message_key(message: ScoreMessage | AlertMessage) -> bytes:
    """The record key of an output message: its camera id, like the frames it came from."""
    return message.camera_id.encode()


# --- frame records --------------------------------------------------------------------------------


def frame_headers(content_type: str, frame_index: int, capture_ts_ns: int) -> list[tuple[str, bytes]]:
    """All v1 headers of a frame record, in the order producers write them."""
    return [
        (HEADER_CONTENT_TYPE, content_type.encode()),
        (HEADER_FRAME_INDEX, str(frame_index).encode()),
        (HEADER_CAPTURE_TS_NS, str(capture_ts_ns).encode()),
        (HEADER_SCHEMA, FRAME_SCHEMA_VERSION.encode()),
    ]


def record_document(key: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> dict[str, Any]:
    """A record's key and headers as the JSON document that the frame and dead-letter schemas describe.

    Bytes are decoded as UTF-8 (invalid sequences become U+FFFD, which no pattern accepts); a repeated
    header keeps its last value.
    """
    return {
        "key": None if key is None else key.decode("utf-8", "replace"),
        "headers": {k: None if v is None else v.decode("utf-8", "replace") for k, v in headers},
    }


def _frame_header_properties() -> dict[str, Any]:
    decimal = {"type": "string", "pattern": DECIMAL_PATTERN, "description": "decimal, below 2^63"}
    return {
        HEADER_CONTENT_TYPE: {"enum": list(CONTENT_TYPES)},
        HEADER_FRAME_INDEX: {**decimal, "description": "monotonic per camera; default: the record offset"},
        HEADER_CAPTURE_TS_NS: {**decimal, "description": "Unix epoch ns; default: the record timestamp"},
        HEADER_SCHEMA: {"const": FRAME_SCHEMA_VERSION},
    }


def frame_record_schema() -> dict[str, Any]:
    """JSON Schema of a frame record's key and headers (see `record_document`)."""
    return {
        "$schema": _JSON_SCHEMA_DIALECT,
        "$id": "urn:anomon:frame:1",
        "title": "anomon frame record, wire format v1",
        "description": (
            "Key and headers of a record of the frames topic (header values as UTF-8). The value is "
            "one JPEG or PNG image of at most max_frame_bytes. Every header is optional: a missing "
            "content-type is sniffed from the image bytes, frame-index defaults to the offset, "
            "capture-ts-ns to the record timestamp. Other headers are allowed and ignored."
        ),
        "type": "object",
        "required": ["key", "headers"],
        "additionalProperties": False,
        "properties": {
            "key": {"type": "string", "pattern": CAMERA_ID_PATTERN, "description": "camera id"},
            "headers": {
                "type": "object",
                "properties": _frame_header_properties(),
                "additionalProperties": {"type": ["string", "null"]},
            },
        },
    }


def dead_letter_schema() -> dict[str, Any]:
    """JSON Schema of a dead letter's key and headers (see `record_document`)."""
    return {
        "$schema": _JSON_SCHEMA_DIALECT,
        "$id": "urn:anomon:dead-letter:1",
        "title": "anomon dead letter, wire format v1",
        "description": (
            "A bad frame record, copied to the dead-letter topic with its key, value, timestamp and "
            "headers unchanged, plus anomon-error, anomon-error-detail and anomon-source."
        ),
        "type": "object",
        "required": ["key", "headers"],
        "additionalProperties": False,
        "properties": {
            "key": {"type": ["string", "null"], "description": "the bad record's key, whatever it was"},
            "headers": {
                "type": "object",
                "required": [HEADER_ERROR, HEADER_ERROR_DETAIL, HEADER_SOURCE],
                "properties": {
                    HEADER_ERROR: {"enum": [r.value for r in Reason]},
                    HEADER_ERROR_DETAIL: {"type": "string"},
                    HEADER_SOURCE: {"type": "string", "pattern": SOURCE_PATTERN},
                },
                "additionalProperties": {"type": ["string", "null"]},
            },
        },
    }


def _message_schema(model: type[BaseModel], schema_id: str) -> dict[str, Any]:
    generated = model.model_json_schema(mode="serialization")
    return {"$schema": _JSON_SCHEMA_DIALECT, "$id": schema_id, **generated}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every wire schema by file stem, as generated from this module."""
    return {
        "score": _message_schema(ScoreMessage, "urn:anomon:score:1"),
        "alert": _message_schema(AlertMessage, "urn:anomon:alert:1"),
        "thumbnail": _message_schema(ThumbnailMessage, "urn:anomon:thumbnail:1"),
        "feedback": _message_schema(FeedbackMessage, "urn:anomon:feedback:1"),
        "frame": frame_record_schema(),
        "dead_letter": dead_letter_schema(),
    }


def load_schema(
    kind: Literal["score", "alert", "thumbnail", "feedback", "frame", "dead_letter"],
) -> dict[str, Any]:
    """The shipped JSON Schema `monitor/schemas/<kind>.schema.json`."""
    text = resources.files("monitor").joinpath("schemas", f"{kind}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def write_schemas(folder: Path) -> list[Path]:
    """Regenerate the shipped schema files; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, schema in json_schemas().items():
        path = folder / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas(Path(__file__).parent / "schemas"):
        print(f"wrote {path}", file=sys.stderr)
