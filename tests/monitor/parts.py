"""Helpers shared by the tests of the service's parts: records as the consumer returns them, and the
tiny model opened on ONNX Runtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from kafka.consumer.fetcher import ConsumerRecord

from model.runtime import open_runtime
from monitor.scoring import LoadedModel
from monitor.wire import frame_headers

RNG = np.random.default_rng(0)


def jpeg(height: int = 60, width: int = 90, seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def record(
    camera: str = "gate-1",
    index: int = 0,
    value: bytes | None = None,
    offset: int | None = None,
    partition: int = 0,
    capture_s: float | None = None,
    key: bytes | None = None,
) -> Any:
    """A frame record of `camera` as KafkaConsumer.poll returns it (captured now unless told)."""
    capture_ns = int((time.time() if capture_s is None else capture_s) * 1e9)
    headers = frame_headers("image/jpeg", index, capture_ns)
    return ConsumerRecord(
        "anomon.frames",
        partition,
        -1,
        index if offset is None else offset,
        capture_ns // 1_000_000,
        0,
        camera.encode() if key is None else key,
        jpeg(seed=index) if value is None else value,
        headers,
        None,
        -1,
        -1,
        -1,
    )


def loaded(artifact: Path) -> LoadedModel:
    return LoadedModel.from_runtime(open_runtime(artifact, "onnxruntime", threads=1))
