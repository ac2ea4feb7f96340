"""Frame records in and out: parse a consumed record, decode its image safely, build its dead letter.

A bad record raises `FrameError(reason, detail)`; the reason is the dead letter's `anomon-error`.
Nothing here does I/O, so every rule is tested on plain bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from monitor.wire import (
    CONTENT_TYPES,
    DECIMAL_PATTERN,
    FRAME_SCHEMA_VERSION,
    HEADER_CAPTURE_TS_NS,
    HEADER_CONTENT_TYPE,
    HEADER_ERROR,
    HEADER_ERROR_DETAIL,
    HEADER_FRAME_INDEX,
    HEADER_SCHEMA,
    HEADER_SOURCE,
    INT64_MAX,
    JPEG,
    MAX_FRAME_BYTES,
    PNG,
    Reason,
    is_camera_id,
)

MAX_PIXELS = 7680 * 4320
"""Default bound on width x height (8K UHD): larger images are refused before decoding."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers that carry the image size (C4 DHT, C8 JPG and CC DAC are not SOFs).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0-7 (SOI/EOI are handled apart).
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
_KNOWN_HEADERS = (HEADER_CONTENT_TYPE, HEADER_FRAME_INDEX, HEADER_CAPTURE_TS_NS, HEADER_SCHEMA)
_DETAIL_LIMIT = 300


class FrameError(Exception):
    """A bad frame record: `reason` goes into the dead letter's `anomon-error`, `detail` explains it."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ConsumedRecord(Protocol):
    """What is read of a consumed Kafka record (kafka-python's `ConsumerRecord` has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """A valid frame record, headers filled in.

    Attributes:
        camera_id: the record key.
        frame_index: monotonic per camera (the `frame-index` header, else the record offset).
        capture_ts_ns: Unix epoch ns (the `capture-ts-ns` header, else the record timestamp).
        content_type: `image/jpeg` or `image/png` (the header, else sniffed from the bytes).
        payload: the encoded image, not yet decoded or checked.
        timestamp_ms: the record timestamp.
        topic, partition, offset: where it was read.
        headers: the raw headers, as consumed.
    """

    camera_id: str
    frame_index: int
    capture_ts_ns: int
    content_type: str
    payload: bytes
    timestamp_ms: int
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def source(self) -> str:
        """`topic/partition/offset`, as in a dead letter's `anomon-source`."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record for the dead-letter topic (key, value and timestamp of the bad record).

    Send it with `producer.send(topic, key=d.key, value=d.value, headers=d.headers,
    timestamp_ms=d.timestamp_ms)`.
    """

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None


def _camera_id(key: bytes | None) -> str:
    if key is None:
        raise FrameError(Reason.BAD_KEY, "the record has no key; key each frame by its camera id")
    try:
        camera_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(Reason.BAD_KEY, "the key is not valid UTF-8") from None
    if not is_camera_id(camera_id):
        raise FrameError(
            Reason.BAD_KEY, f"key {camera_id[:40]!r} is not a camera id: 1 to 128 chars of [A-Za-z0-9._-]"
        )
    return camera_id


def _known_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, raw in headers:
        if "\ufffd" in name:  # how the consumer hands over a name that is not UTF-8 (kafka_client)
            raise FrameError(Reason.BAD_HEADER, "a header name is not valid UTF-8")
        if name not in _KNOWN_HEADERS:
            continue
        if name in found:
            raise FrameError(Reason.BAD_HEADER, f"header {name} is repeated")
        if raw is None:
            raise FrameError(Reason.BAD_HEADER, f"header {name} has no value")
        try:
            found[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(Reason.BAD_HEADER, f"header {name} is not valid UTF-8") from None
    return found


def _decimal(found: dict[str, str], name: str, default: int) -> int:
    text = found.get(name)
    if text is None:
        return default
    if re.fullmatch(DECIMAL_PATTERN, text) is None or int(text) > INT64_MAX:
        raise FrameError(
            Reason.BAD_HEADER, f"header {name} {text[:30]!r} is not a decimal integer below 2^63"
        )
    return int(text)


def sniff_content_type(payload: bytes) -> str | None:
    """`image/jpeg` or `image/png` from the magic bytes, else None."""
    if payload.startswith(_PNG_SIGNATURE):
        return PNG
    if payload.startswith(_JPEG_SOI + b"\xff"):
        return JPEG
    return None


def parse_record(record: ConsumedRecord, max_frame_bytes: int = MAX_FRAME_BYTES) -> FrameRecord:
    """Check a consumed frame record against wire format v1 and fill its missing optional headers.

    The image itself is not decoded (see `decode_frame`).

    Raises:
        FrameError: bad-key, unknown-schema, bad-header, bad-content-type, empty or oversized.
    """
    camera_id = _camera_id(record.key)
    headers = tuple(record.headers or ())
    found = _known_headers(headers)
    if HEADER_SCHEMA in found and found[HEADER_SCHEMA] != FRAME_SCHEMA_VERSION:
        raise FrameError(
            Reason.UNKNOWN_SCHEMA,
            f"{HEADER_SCHEMA} {found[HEADER_SCHEMA][:20]!r} is not a known version (this reader knows 1)",
        )
    frame_index = _decimal(found, HEADER_FRAME_INDEX, record.offset)
    if HEADER_CAPTURE_TS_NS not in found and record.timestamp < 0:
        raise FrameError(Reason.BAD_HEADER, f"no {HEADER_CAPTURE_TS_NS} header and no record timestamp")
    capture_ts_ns = _decimal(found, HEADER_CAPTURE_TS_NS, max(record.timestamp, 0) * 1_000_000)
    payload = record.value or b""
    if not payload:
        raise FrameError(Reason.EMPTY, "the record has no value; it must be one JPEG or PNG image")
    if len(payload) > max_frame_bytes:
        raise FrameError(
            Reason.OVERSIZED, f"{len(payload)} bytes is over max_frame_bytes ({max_frame_bytes})"
        )
    content_type = found[HEADER_CONTENT_TYPE] if HEADER_CONTENT_TYPE in found else sniff_content_type(payload)
    if content_type is None:
        raise FrameError(
            Reason.BAD_CONTENT_TYPE, f"no {HEADER_CONTENT_TYPE} header and the value is neither JPEG nor PNG"
        )
    if content_type not in CONTENT_TYPES:
        raise FrameError(
            Reason.BAD_CONTENT_TYPE,
            f"{HEADER_CONTENT_TYPE} {content_type[:40]!r} is not image/jpeg or image/png",
        )
    return FrameRecord(
        camera_id=camera_id,
        frame_index=frame_index,
        capture_ts_ns=capture_ts_ns,
        content_type=content_type,
        payload=payload,
        timestamp_ms=record.timestamp,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        headers=headers,
    )


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature, then the IHDR chunk: length 13, "IHDR", width, height (big-endian).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError(Reason.UNDECODABLE, "PNG without an IHDR header")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FrameError(Reason.UNDECODABLE, f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise FrameError(Reason.UNDECODABLE, f"JPEG segment length {length} at byte {pos}")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + length
    raise FrameError(Reason.UNDECODABLE, "JPEG without a frame header (truncated or not a JPEG)")


def image_size(payload: bytes, content_type: str) -> tuple[int, int]:
    """(width, height) read from the JPEG SOF or PNG IHDR header, without decoding the image.

    Raises:
        FrameError: bad-content-type when the bytes are not of `content_type`, undecodable when the
            header is missing or truncated.
    """
    actual = sniff_content_type(payload)
    if actual != content_type:
        found = f"a {actual} image" if actual else "neither JPEG nor PNG"
        raise FrameError(
            Reason.BAD_CONTENT_TYPE, f"{HEADER_CONTENT_TYPE} is {content_type} but the value is {found}"
        )
    return _png_size(payload) if content_type == PNG else _jpeg_size(payload)


def decode_frame(record: FrameRecord, max_pixels: int = MAX_PIXELS, grayscale: bool = False) -> np.ndarray:
    """Decode a frame's image: uint8 HxW (grayscale) or HxWx3 BGR, as OpenCV reads files.

    The size is read from the image header first, so a small file claiming a huge image is refused
    before any memory is allocated for it. EXIF orientation is ignored: the array has the header's size.

    Raises:
        FrameError: bad-content-type, too-many-pixels or undecodable.
    """
    width, height = image_size(record.payload, record.content_type)
    if width == 0 or height == 0:
        raise FrameError(Reason.UNDECODABLE, f"the image header says {width}x{height} pixels")
    if width * height > max_pixels:
        raise FrameError(
            Reason.TOO_MANY_PIXELS, f"{width}x{height} is over max_pixels ({max_pixels}); send smaller frames"
        )
    flags = (cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(record.payload, np.uint8), flags)
    if image is None:
        raise FrameError(
            Reason.UNDECODABLE, f"OpenCV cannot decode this {record.content_type} (corrupt or truncated)"
        )
    if image.shape[:2] != (height, width) or image.dtype != np.uint8:
        raise FrameError(
            Reason.UNDECODABLE,
            f"decoded {image.shape[1]}x{image.shape[0]} but the header says {width}x{height}",
        )
    return image


def dead_letter(record: ConsumedRecord, error: FrameError) -> DeadLetter:
    """The dead letter of a bad record: its key, value, timestamp and headers, plus the error headers.

    Error headers already on the record (a dead letter fed back in) are replaced, not repeated.
    """
    ours = (HEADER_ERROR, HEADER_ERROR_DETAIL, HEADER_SOURCE)
    # kafka-python sends bytes header values only, so a null value is copied as empty.
    kept = [(name, value or b"") for name, value in record.headers or () if name not in ours]
    source = f"{record.topic}/{record.partition}/{record.offset}"
    return DeadLetter(
        key=record.key,
        value=record.value,
        headers=[
            *kept,
            (HEADER_ERROR, error.reason.value.encode()),
            (HEADER_ERROR_DETAIL, error.detail[:_DETAIL_LIMIT].encode()),
            (HEADER_SOURCE, source.encode()),
        ],
        timestamp_ms=record.timestamp if record.timestamp >= 0 else None,
    )
