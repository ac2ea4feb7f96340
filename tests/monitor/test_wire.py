"""Wire format v1: messages serialize to compact JSON that the shipped JSON Schemas accept, both ways."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from monitor.wire import (
    AlertMessage,
    AlertPeak,
    Latency,
    ModelInfo,
    Region,
    ScoreMessage,
    Snapshot,
    WireError,
    datetime_from_ns,
    decode,
    encode,
    format_ts,
    json_schemas,
    load_schema,
    message_key,
)

MODEL = ModelInfo(
    name="anomem", version="ped2-2026-11-22", backend="onnxruntime", precision="fp32", sha256="ab" * 32
)
CAPTURED = datetime(2026, 11, 22, 10, 0, 0, 123_000, tzinfo=UTC)


def _score(**changes: Any) -> ScoreMessage:
    fields: dict[str, Any] = {
        "camera_id": "gate-1",
        "frame_index": 1042,
        "capture_ts": CAPTURED,
        "processed_ts": CAPTURED + timedelta(milliseconds=38),
        "score": 0.81,
        "raw_score": 3.7,
        "anomalous": True,
        "regions": [Region(bbox=(120, 64, 188, 140), score=0.93)],
        "model": MODEL,
        "latency_ms": Latency(queue=4.1, inference=11.0, end_to_end=38.2),
    }
    return ScoreMessage(**(fields | changes))


def _alert(kind: str = "start", **changes: Any) -> AlertMessage:
    fields: dict[str, Any] = {
        "type": kind,
        "alert_id": uuid.UUID("8c4f2a9e-0d6b-4d0e-9a53-5d9e3c1f7b21"),
        "camera_id": "gate-1",
        "start_ts": CAPTURED,
        "end_ts": CAPTURED + timedelta(seconds=4) if kind == "end" else None,
        "frames": 17,
        "peak": AlertPeak(
            score=0.93, frame_index=1042, ts=CAPTURED, regions=[Region(bbox=(1, 2, 3, 4), score=0.9)]
        ),
        "snapshot": Snapshot.from_image("image/jpeg", b"\xff\xd8\xff\xe0fake"),
        "model": MODEL,
        "end_reason": "cleared" if kind == "end" else None,
    }
    return AlertMessage(**(fields | changes))


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(kind)  # type: ignore[arg-type]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


_SCORE_VALIDATOR = _validator("score")
_ALERT_VALIDATOR = _validator("alert")


def test_shipped_schemas_equal_the_ones_generated_from_the_code() -> None:
    folder = Path(__file__).parents[2] / "monitor" / "schemas"
    for kind, generated in json_schemas().items():
        assert load_schema(kind) == generated, f"{kind}.schema.json is stale: run python -m monitor.wire"  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(f"{k}.schema.json" for k in json_schemas())


def test_score_is_compact_json_in_the_documented_shape() -> None:
    data = encode(_score())
    assert b" " not in data and data.startswith(b'{"schema":"anomon.score/1","camera_id":"gate-1"')
    doc = json.loads(data)
    assert doc["capture_ts"] == "2026-11-22T10:00:00.123Z"
    assert doc["processed_ts"] == "2026-11-22T10:00:00.161Z"
    assert doc["regions"] == [{"bbox": [120, 64, 188, 140], "score": 0.93}]
    assert doc["latency_ms"] == {"queue": 4.1, "inference": 11.0, "end_to_end": 38.2}
    _SCORE_VALIDATOR.validate(doc)
    assert decode(data) == _score()
    assert message_key(_score()) == b"gate-1"


@pytest.mark.parametrize("kind", ["start", "update", "end"])
def test_alerts_of_every_type_validate_and_round_trip(kind: str) -> None:
    alert = _alert(kind)
    data = encode(alert)
    doc = json.loads(data)
    _ALERT_VALIDATOR.validate(doc)
    assert doc["schema"] == "anomon.alert/1" and doc["alert_id"] == "8c4f2a9e-0d6b-4d0e-9a53-5d9e3c1f7b21"
    assert (doc["end_ts"] is None) == (kind != "end")
    assert decode(data) == alert
    snapshot = decode(data).snapshot  # type: ignore[union-attr]
    assert snapshot is not None and snapshot.image_bytes() == b"\xff\xd8\xff\xe0fake"


def test_an_alert_without_snapshot_validates() -> None:
    doc = json.loads(encode(_alert("update", snapshot=None)))
    assert doc["snapshot"] is None
    _ALERT_VALIDATOR.validate(doc)


# Each broken document must be refused by the shipped schema AND by the pydantic model.
SCORE_BREAKS = [
    ("score above 1", lambda d: d | {"score": 1.5}),
    ("negative frame index", lambda d: d | {"frame_index": -1}),
    ("bad camera id", lambda d: d | {"camera_id": "gate 1"}),
    ("timestamp without ms", lambda d: d | {"capture_ts": "2026-11-22T10:00:00Z"}),
    ("timestamp with offset", lambda d: d | {"capture_ts": "2026-11-22T10:00:00.123+01:00"}),
    ("unknown schema", lambda d: d | {"schema": "anomon.score/2"}),
    ("extra field", lambda d: d | {"extra": 1}),
    ("missing model", lambda d: {k: v for k, v in d.items() if k != "model"}),
    ("bbox of 3", lambda d: d | {"regions": [{"bbox": [1, 2, 3], "score": 0.5}]}),
    ("negative latency", lambda d: d | {"latency_ms": d["latency_ms"] | {"queue": -1.0}}),
    ("string score", lambda d: d | {"score": "0.5"}),
]


@pytest.mark.parametrize(("name", "brk"), SCORE_BREAKS, ids=[name for name, _ in SCORE_BREAKS])
def test_invalid_scores_are_refused_by_schema_and_model(name: str, brk: Any) -> None:
    doc = brk(json.loads(encode(_score())))
    assert not _SCORE_VALIDATOR.is_valid(doc), name
    with pytest.raises(WireError, match="not an anomon message"):
        decode(json.dumps(doc))


END_TS = "2026-11-22T10:00:04.000Z"
ALERT_BREAKS = [
    ("end without end_ts", lambda d: d | {"type": "end", "end_ts": None}),
    ("start with end_ts", lambda d: d | {"end_ts": "2026-11-22T10:00:04.000Z"}),
    ("end without end_reason", lambda d: d | {"type": "end", "end_ts": "2026-11-22T10:00:04.000Z"}),
    ("start with end_reason", lambda d: d | {"end_reason": "stalled"}),
    (
        "unknown end_reason",
        lambda d: d | {"type": "end", "end_ts": "2026-11-22T10:00:04.000Z", "end_reason": "x"},
    ),
    ("model without sha256", lambda d: d | {"model": {k: v for k, v in d["model"].items() if k != "sha256"}}),
    ("unknown type", lambda d: d | {"type": "stop"}),
    ("zero frames", lambda d: d | {"frames": 0}),
    ("bad uuid", lambda d: d | {"alert_id": "not-a-uuid"}),
    ("snapshot not base64", lambda d: d | {"snapshot": {"content_type": "image/jpeg", "data_b64": "!!"}}),
    ("snapshot gif", lambda d: d | {"snapshot": {"content_type": "image/gif", "data_b64": ""}}),
]


@pytest.mark.parametrize(("name", "brk"), ALERT_BREAKS, ids=[name for name, _ in ALERT_BREAKS])
def test_invalid_alerts_are_refused_by_schema_and_model(name: str, brk: Any) -> None:
    doc = brk(json.loads(encode(_alert("start"))))
    assert not _ALERT_VALIDATOR.is_valid(doc), name
    with pytest.raises(WireError):
        decode(json.dumps(doc))


def test_decode_errors_are_one_line_naming_the_field() -> None:
    with pytest.raises(WireError, match=r"field 'score'") as caught:
        decode(json.dumps(json.loads(encode(_score())) | {"score": 2}))
    assert "\n" not in str(caught.value)
    with pytest.raises(WireError):
        decode(b"not json")
    with pytest.raises(WireError):
        decode(b'{"schema": "something/1"}')


def test_model_side_rules_the_schema_cannot_express() -> None:
    with pytest.raises(ValidationError, match="x2 >= x1"):
        Region(bbox=(10, 0, 5, 5), score=0.5)
    with pytest.raises(ValidationError):
        _score(raw_score=float("nan"))
    with pytest.raises(ValidationError, match="timezone-aware"):
        _score(capture_ts=datetime(2026, 1, 1))


def test_timestamps_are_utc_with_milliseconds_and_z() -> None:
    assert format_ts(datetime(2026, 11, 22, 11, 0, 0, 123_999, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-11-22T10:00:00.123Z"
    )
    ns = 1_795_341_600_123_456_789
    assert format_ts(datetime_from_ns(ns)) == "2026-11-22T10:00:00.123Z"
    assert format_ts(datetime_from_ns(0)) == "1970-01-01T00:00:00.000Z"
    # Sub-millisecond precision is dropped on validation, so a message survives the round trip.
    message = _score(capture_ts=CAPTURED + timedelta(microseconds=456))
    assert message.capture_ts == CAPTURED and decode(encode(message)) == message


camera_ids = st.from_regex(r"\A[A-Za-z0-9._-]{1,128}\Z")
unit = st.floats(0.0, 1.0)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
regions = st.lists(
    st.builds(
        lambda x, y, w, h, s: Region(bbox=(x, y, x + w, y + h), score=s),
        *[st.integers(0, 10_000)] * 4,
        unit,
    ),
    max_size=3,
)
scores = st.builds(
    ScoreMessage,
    camera_id=camera_ids,
    frame_index=st.integers(0, 2**63 - 1),
    capture_ts=timestamps,
    processed_ts=timestamps,
    score=unit,
    raw_score=st.floats(allow_nan=False, allow_infinity=False),
    anomalous=st.booleans(),
    regions=regions,
    model=st.just(MODEL),
    latency_ms=st.builds(
        Latency, queue=st.floats(0, 1e6), inference=st.floats(0, 1e6), end_to_end=st.floats(0, 1e6)
    ),
)


@settings(max_examples=150, deadline=None)
@given(scores)
def test_any_valid_score_validates_against_the_schema_and_round_trips(message: ScoreMessage) -> None:
    data = encode(message)
    _SCORE_VALIDATOR.validate(json.loads(data))
    assert decode(data) == message


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["start", "update", "end"]), camera_ids, st.integers(1, 10**6), unit, regions)
def test_any_valid_alert_validates_against_the_schema_and_round_trips(
    kind: str, camera: str, frames: int, peak: float, boxes: list[Region]
) -> None:
    alert = _alert(
        kind,
        camera_id=camera,
        frames=frames,
        peak=AlertPeak(score=peak, frame_index=3, ts=CAPTURED, regions=boxes),
    )
    data = encode(alert)
    _ALERT_VALIDATOR.validate(json.loads(data))
    assert decode(data) == alert


def test_thumbnail_and_feedback_messages_validate_and_round_trip() -> None:
    from monitor.wire import FeedbackMessage, ThumbnailMessage

    thumbnail = ThumbnailMessage(
        camera_id="gate-1",
        frame_index=7,
        capture_ts=CAPTURED,
        score=0.7,
        anomalous=True,
        regions=[Region(bbox=(1, 2, 3, 4), score=0.9)],
        model=MODEL,
        image=Snapshot.from_image("image/jpeg", b"\xff\xd8\xff\xe0fake"),
    )
    feedback = FeedbackMessage(
        alert_id=uuid.UUID("8c4f2a9e-0d6b-4d0e-9a53-5d9e3c1f7b21"),
        camera_id="gate-1",
        verdict="false_alarm",
        ts=CAPTURED,
        alert_start_ts=CAPTURED,
        alert_end_ts=None,
        model=MODEL,
    )
    for kind, message in (("thumbnail", thumbnail), ("feedback", feedback)):
        data = encode(message)
        _validator(kind).validate(json.loads(data))
        assert decode(data) == message
    broken = json.loads(encode(feedback)) | {"verdict": "maybe"}
    assert not _validator("feedback").is_valid(broken)
    with pytest.raises(WireError):
        decode(json.dumps(broken))


def test_a_learning_thumbnail_has_no_model_score_or_boxes_in_the_code_and_the_schema() -> None:
    from monitor.wire import ThumbnailMessage

    learning = ThumbnailMessage(
        camera_id="new-cam",
        frame_index=3,
        capture_ts=CAPTURED,
        score=None,
        anomalous=False,
        model=None,
        image=Snapshot.from_image("image/jpeg", b"\xff\xd8\xff\xe0fake"),
    )
    data = encode(learning)
    document = json.loads(data)
    assert (document["model"], document["score"], document["regions"]) == (None, None, [])
    validator = _validator("thumbnail")
    validator.validate(document)
    assert decode(data) == learning and learning.learning
    # Half a learning thumbnail, or a learning one with boxes or an alert, is refused both ways.
    box = {"bbox": [1, 2, 3, 4], "score": 0.9}
    scored_model = json.loads(MODEL.model_dump_json())
    for broken in (
        document | {"score": 0.4},
        document | {"anomalous": True},
        document | {"regions": [box]},
        document | {"model": scored_model},  # a model but no score
    ):
        assert not validator.is_valid(broken), broken
        with pytest.raises(WireError):
            decode(json.dumps(broken))
    scored = document | {"model": scored_model, "score": 0.4, "regions": [box]}
    validator.validate(scored)
    assert not decode(json.dumps(scored)).learning  # type: ignore[union-attr]
