"""Frame records: parsing per wire format v1, safe decoding, dead letters; targeted and property-based."""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from monitor.frames import (
    FrameError,
    FrameRecord,
    dead_letter,
    decode_frame,
    image_size,
    parse_record,
)
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.wire import (
    HEADER_CAPTURE_TS_NS,
    HEADER_CONTENT_TYPE,
    HEADER_ERROR,
    HEADER_FRAME_INDEX,
    HEADER_SCHEMA,
    HEADER_SOURCE,
    INT64_MAX,
    Reason,
    frame_headers,
    load_schema,
    record_document,
)
from tests.monitor.conftest import RecordReader, TopicFactory

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 255, (24, 40), dtype=np.uint8)
COLOR = np.zeros((24, 40, 3), np.uint8)
COLOR[:, :20, 0] = 220  # blue left half, red right half (BGR)
COLOR[:, 20:, 2] = 220
JPEG_BYTES = cv2.imencode(".jpg", COLOR)[1].tobytes()
PNG_BYTES = cv2.imencode(".png", GRAY)[1].tobytes()
FRAME_SCHEMA = jsonschema.Draft202012Validator(load_schema("frame"))
DEAD_LETTER_SCHEMA = jsonschema.Draft202012Validator(load_schema("dead_letter"))


def _record(
    key: bytes | None = b"gate-1",
    value: bytes | None = JPEG_BYTES,
    headers: list[tuple[str, bytes | None]] | None = None,
    offset: int = 7,
    timestamp: int = 1_700_000_000_123,
) -> Any:
    headers = frame_headers("image/jpeg", 41, 1_700_000_000_100_000_000) if headers is None else headers
    return ConsumerRecord("anomon.frames", 2, -1, offset, timestamp, 0, key, value, headers, None, -1, -1, -1)


def _frame(payload: bytes, content_type: str = "image/jpeg") -> FrameRecord:
    return FrameRecord("cam", 0, 0, content_type, payload, 0, "t", 0, 0)


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(JPEG_BYTES)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _reason(call: Any) -> Reason:
    with pytest.raises(FrameError) as caught:
        call()
    return caught.value.reason


# --- parse_record ---------------------------------------------------------------------------------


def test_a_full_record_parses_with_its_headers() -> None:
    frame = parse_record(_record())
    assert (frame.camera_id, frame.frame_index, frame.capture_ts_ns) == (
        "gate-1",
        41,
        1_700_000_000_100_000_000,
    )
    assert frame.content_type == "image/jpeg" and frame.payload == JPEG_BYTES
    assert frame.source == "anomon.frames/2/7" and frame.timestamp_ms == 1_700_000_000_123
    assert frame.headers[0] == (HEADER_CONTENT_TYPE, b"image/jpeg")


def test_missing_optional_headers_are_filled_from_offset_timestamp_and_bytes() -> None:
    frame = parse_record(_record(value=PNG_BYTES, headers=[("trace-id", b"x")]))
    assert frame.frame_index == 7
    assert frame.capture_ts_ns == 1_700_000_000_123_000_000
    assert frame.content_type == "image/png"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(key=None), Reason.BAD_KEY),
        (_record(key=b"\xff\xfegate"), Reason.BAD_KEY),
        (_record(key=b"x" * 129), Reason.BAD_KEY),
        (_record(key=b"gate 1"), Reason.BAD_KEY),
        (_record(key=b"gate-1\n"), Reason.BAD_KEY),
        (_record(key=b""), Reason.BAD_KEY),
        (_record(headers=[(HEADER_SCHEMA, b"2")]), Reason.UNKNOWN_SCHEMA),
        (_record(headers=[(HEADER_FRAME_INDEX, b"-3")]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_FRAME_INDEX, b"12_000")]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_FRAME_INDEX, str(INT64_MAX + 1).encode())]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_CAPTURE_TS_NS, "١٢".encode())]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_CAPTURE_TS_NS, b"\xff")]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_FRAME_INDEX, None)]), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_FRAME_INDEX, b"1"), (HEADER_FRAME_INDEX, b"1")]), Reason.BAD_HEADER),
        (_record(headers=[], timestamp=-1), Reason.BAD_HEADER),
        (_record(headers=[(HEADER_CONTENT_TYPE, b"image/gif")]), Reason.BAD_CONTENT_TYPE),
        (_record(headers=[], value=b"GIF89a..."), Reason.BAD_CONTENT_TYPE),
        (_record(value=b""), Reason.EMPTY),
        (_record(value=None), Reason.EMPTY),
        (_record(value=b"\xff\xd8\xff" + b"\0" * (4 * 1024 * 1024)), Reason.OVERSIZED),
    ],
)
def test_bad_records_are_refused_with_their_reason(record: Any, reason: Reason) -> None:
    assert _reason(lambda: parse_record(record)) == reason


def test_max_frame_bytes_is_configurable() -> None:
    assert _reason(lambda: parse_record(_record(), max_frame_bytes=100)) == Reason.OVERSIZED
    assert parse_record(_record(), max_frame_bytes=len(JPEG_BYTES)).payload == JPEG_BYTES


# --- decode_frame ---------------------------------------------------------------------------------


def test_decode_gives_bgr_or_gray_uint8_of_the_header_size() -> None:
    color = decode_frame(_frame(JPEG_BYTES), grayscale=False)
    gray = decode_frame(_frame(JPEG_BYTES), grayscale=True)
    assert color.shape == (24, 40, 3) and gray.shape == (24, 40) and color.dtype == gray.dtype == np.uint8
    # JPEG is lossy but close; PNG is exact.
    assert np.abs(color.astype(int) - COLOR).mean() < 10
    assert np.array_equal(decode_frame(_frame(PNG_BYTES, "image/png"), grayscale=True), GRAY)
    assert image_size(JPEG_BYTES, "image/jpeg") == (40, 24) and image_size(PNG_BYTES, "image/png") == (40, 24)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_frame(_png_claiming(100_000, 100_000), "image/png"), Reason.TOO_MANY_PIXELS),
        (_frame(_jpeg_claiming(60_000, 60_000)), Reason.TOO_MANY_PIXELS),
        (_frame(JPEG_BYTES[: len(JPEG_BYTES) // 2]), Reason.UNDECODABLE),
        (_frame(JPEG_BYTES[:-2]), Reason.UNDECODABLE),
        (_frame(JPEG_BYTES[:20]), Reason.UNDECODABLE),
        (_frame(PNG_BYTES[:-30], "image/png"), Reason.UNDECODABLE),
        (_frame(_png_claiming(0, 10), "image/png"), Reason.UNDECODABLE),
        (_frame(PNG_BYTES, "image/jpeg"), Reason.BAD_CONTENT_TYPE),
        (_frame(JPEG_BYTES, "image/png"), Reason.BAD_CONTENT_TYPE),
        (_frame(b"plain text", "image/jpeg"), Reason.BAD_CONTENT_TYPE),
    ],
)
def test_bad_images_are_refused_with_their_reason(frame: FrameRecord, reason: Reason) -> None:
    assert _reason(lambda: decode_frame(frame)) == reason


def test_max_pixels_is_checked_before_decoding() -> None:
    assert _reason(lambda: decode_frame(_frame(JPEG_BYTES), max_pixels=40 * 24 - 1)) == Reason.TOO_MANY_PIXELS
    assert decode_frame(_frame(JPEG_BYTES), max_pixels=40 * 24).shape == (24, 40, 3)


# --- properties -----------------------------------------------------------------------------------

header_names = st.one_of(
    st.sampled_from([HEADER_CONTENT_TYPE, HEADER_FRAME_INDEX, HEADER_CAPTURE_TS_NS, HEADER_SCHEMA]),
    st.text(max_size=8),
)
header_values = st.one_of(
    st.none(),
    st.binary(max_size=24),
    st.sampled_from([b"image/jpeg", b"image/png", b"1", b"2", b""]),
    st.integers(0, INT64_MAX).map(lambda i: str(i).encode()),
)
keys = st.one_of(
    st.none(), st.binary(max_size=140), st.from_regex(r"\A[A-Za-z0-9._ -]{0,130}\Z").map(str.encode)
)


@settings(max_examples=400, deadline=None)
@given(
    keys,
    st.one_of(st.none(), st.binary(max_size=64), st.just(JPEG_BYTES), st.just(PNG_BYTES)),
    st.lists(st.tuples(header_names, header_values), max_size=6),
    st.integers(0, INT64_MAX),
    st.integers(-1, INT64_MAX // 1_000_000),
)
def test_parse_never_raises_anything_but_frame_error(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]], offset: int, ts: int
) -> None:
    try:
        frame = parse_record(_record(key, value, headers, offset, ts))
    except FrameError as err:
        assert isinstance(err.reason, Reason) and err.detail
        return
    assert frame.payload and 0 <= frame.frame_index <= INT64_MAX and frame.capture_ts_ns >= 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(header_names, header_values), max_size=6, unique_by=lambda h: h[0]),
    keys,
)
def test_the_frame_schema_accepts_exactly_what_the_parser_accepts(
    headers: list[tuple[str, bytes | None]], key: bytes | None
) -> None:
    # The schema cannot say "below 2^63" for 19-digit numbers; keep to what it can say.
    for _, value in headers:
        assume(not (value and re.fullmatch(rb"[0-9]{19}", value) and int(value) > INT64_MAX))
    try:
        parse_record(_record(key, JPEG_BYTES, headers))
        accepted = True
    except FrameError:
        accepted = False
    assert FRAME_SCHEMA.is_valid(record_document(key, headers)) == accepted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(["image/jpeg", "image/png"]), st.booleans())
def test_decode_of_arbitrary_bytes_never_crashes(payload: bytes, content_type: str, grayscale: bool) -> None:
    try:
        image = decode_frame(_frame(payload, content_type), grayscale=grayscale)
    except FrameError:
        return
    assert image.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(JPEG_BYTES, "image/jpeg"), (PNG_BYTES, "image/png")]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
    st.booleans(),
)
def test_decode_of_corrupted_images_gives_an_image_of_the_header_size_or_frame_error(
    original: tuple[bytes, str], flips: list[tuple[int, int]], cut: int, grayscale: bool
) -> None:
    data = bytearray(original[0])
    for position, byte in flips:
        data[position % len(data)] = byte
    payload = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        image = decode_frame(_frame(payload, original[1]), grayscale=grayscale)
    except FrameError:
        return
    width, height = image_size(payload, original[1])
    assert image.shape[:2] == (height, width) and image.dtype == np.uint8


# --- dead letters ---------------------------------------------------------------------------------


def test_dead_letter_keeps_the_record_and_adds_the_error() -> None:
    record = _record(key=b"bad key", headers=[("trace-id", b"abc"), (HEADER_ERROR, b"old")])
    with pytest.raises(FrameError) as caught:
        parse_record(record)
    letter = dead_letter(record, caught.value)
    assert letter.key == b"bad key" and letter.value == JPEG_BYTES and letter.timestamp_ms == record.timestamp
    assert letter.headers[0] == ("trace-id", b"abc")
    assert [v for k, v in letter.headers if k == HEADER_ERROR] == [b"bad-key"]
    assert dict(letter.headers)[HEADER_SOURCE] == b"anomon.frames/2/7"
    assert DEAD_LETTER_SCHEMA.is_valid(record_document(letter.key, letter.headers))
    assert not DEAD_LETTER_SCHEMA.is_valid(record_document(record.key, record.headers))


def test_records_go_through_kafka_and_bad_ones_to_the_dead_letter_topic(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_records: RecordReader
) -> None:
    frames, dlq = new_topic(), new_topic(suffix=".dlq")
    producer = make_producer(kafka_settings)
    good_headers = frame_headers("image/jpeg", 0, 1_700_000_000_000_000_000)
    producer.send(frames, key=b"gate-1", value=JPEG_BYTES, headers=good_headers)
    producer.send(frames, key=b"gate-1", value=PNG_BYTES, headers=[("content-type", b"image/jpeg")])
    producer.send(frames, key=b"no good", value=b"junk", headers=[("trace-id", b"t1")])
    producer.flush()
    consumed = read_records(frames, 3)
    assert len(consumed) == 3
    decoded, letters = [], []
    for record in consumed:
        try:
            decoded.append(decode_frame(parse_record(record)))
        except FrameError as err:
            letter = dead_letter(record, err)
            letters.append(letter)
            producer.send(
                dlq,
                key=letter.key,
                value=letter.value,
                headers=letter.headers,
                timestamp_ms=letter.timestamp_ms,
            )
    producer.flush()
    producer.close()
    assert len(decoded) == 1 and decoded[0].shape == (24, 40, 3)
    assert FRAME_SCHEMA.is_valid(record_document(consumed[0].key, consumed[0].headers))

    dead = read_records(dlq, 2)
    assert [r.value for r in dead] == [PNG_BYTES, b"junk"]
    assert [dict(r.headers)[HEADER_ERROR] for r in dead] == [b"bad-content-type", b"bad-key"]
    assert dict(dead[1].headers)["trace-id"] == b"t1" and dead[1].key == b"no good"
    assert dict(dead[0].headers)[HEADER_SOURCE] == f"{frames}/0/1".encode()
    assert dead[0].timestamp == consumed[1].timestamp
    for record in dead:
        DEAD_LETTER_SCHEMA.validate(record_document(record.key, record.headers))
