"""Intake: polled records to model inputs.

Parse each record (a bad one is rejected with its reason, for the dead-letter topic), drop stale
frames in live mode, decode in a thread pool (OpenCV releases the GIL), resize to the input size of
the camera's model and pair each frame with an earlier one of its camera for motion
(`monitor.pairing`; a frame skipped here is reported to it, so that the next is not paired across
the skip). No Kafka I/O: records in, frames and rejects out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from model.config import InputSpec
from model.data import resize_frame
from monitor.config import IntakeSettings
from monitor.frames import ConsumedRecord, FrameError, FrameRecord, decode_frame, parse_record
from monitor.metrics import ServiceMetrics
from monitor.pairing import MotionPairs
from monitor.scoring import LoadedModel

_Wanted = tuple[ConsumedRecord, FrameRecord, LoadedModel]  # a record to decode, and its camera's model


@dataclass
class Frame:
    """A decoded frame on its way through one cycle."""

    consumed: ConsumedRecord
    record: FrameRecord
    image: np.ndarray  # the decoded source frame (kept for the alert snapshot)
    model_input: np.ndarray  # uint8 [C, H, W] at the model's input size, previous frame stacked
    model: LoadedModel  # the model that scores it
    received: float  # time.time() when polled


@dataclass
class IntakeResult:
    """What one batch of records became: frames to score, records to dead-letter, and counts."""

    frames: list[Frame] = field(default_factory=list)
    rejected: list[tuple[ConsumedRecord, FrameError]] = field(default_factory=list)
    consumed: int = 0  # records parsed as frames
    dropped: int = 0  # frames dropped as stale (live mode)
    learning: int = 0  # frames of cameras without a model: counted, not scored
    # The latest frame of each camera without a model, not decoded (for its thumbnail, if one is due).
    learning_frames: dict[str, FrameRecord] = field(default_factory=dict)


class Intake:
    """Turns polled records into frames for the models.

    Args:
        settings: the `intake` section.
        model_for: the model that scores a camera's frames; None: it has none yet (learning).
        metrics: where consumed, dropped and unpaired frames are counted.
    """

    def __init__(
        self,
        settings: IntakeSettings,
        model_for: Callable[[str], LoadedModel | None],
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.model_for = model_for
        self.metrics = metrics
        # The earlier frames of each camera that its next frames may be paired with, for motion.
        self.motion = MotionPairs(settings.motion_max_gap_seconds, settings.motion_interval_seconds)
        self._pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="anomon-decode")
        self._specs: dict[str, InputSpec] = {}  # the input spec of each camera's latest frame
        self.learning: set[str] = set()  # cameras whose latest frame had no model

    def take(self, records: Sequence[ConsumedRecord]) -> IntakeResult:
        """Parse, filter, decode, resize and pair a batch of records, in record order."""
        now = time.time()
        out = IntakeResult()
        order = {id(r): i for i, r in enumerate(records)}
        # In record order: a frame to decode, or the camera of a record skipped here (pairing must
        # see the skip between the frames around it).
        steps: list[_Wanted | str] = []
        for consumed in records:
            try:
                record = parse_record(consumed, self.settings.max_frame_bytes)
            except FrameError as err:
                out.rejected.append((consumed, err))
                if consumed.key:  # the record may still name its camera
                    steps.append(consumed.key.decode("utf-8", "replace"))
                continue
            out.consumed += 1
            self.metrics.frames_consumed.labels(record.camera_id).inc()
            if self._stale(record, now):
                out.dropped += 1
                self.metrics.frames_dropped.labels(record.camera_id, "stale").inc()
                steps.append(record.camera_id)
                continue
            model = self.model_for(record.camera_id)
            if model is None:
                out.learning += 1
                self.metrics.frames_learning.labels(record.camera_id).inc()
                self.learning.add(record.camera_id)
                out.learning_frames[record.camera_id] = record
                steps.append(record.camera_id)
                continue
            self.learning.discard(record.camera_id)
            steps.append((consumed, record, model))

        def decode(
            step: tuple[ConsumedRecord, FrameRecord, LoadedModel] | str,
        ) -> np.ndarray | FrameError | None:
            if isinstance(step, str):
                return None
            try:
                return decode_frame(step[1], self.settings.max_pixels, grayscale=not step[2].spec.color)
            except FrameError as err:
                return err

        # Decoded in parallel, paired in record order (pairing is per camera and order matters).
        for step, image in zip(steps, self._pool.map(decode, steps), strict=True):
            if isinstance(step, str):
                self.motion.skipped(step)
                continue
            consumed, record, model = step
            if not isinstance(image, np.ndarray):
                assert image is not None
                out.rejected.append((consumed, image))
                self.motion.skipped(record.camera_id)
                continue
            model_input = self._model_input(record, image, model)
            out.frames.append(Frame(consumed, record, image, model_input, model, now))
        out.rejected.sort(key=lambda rejected: order[id(rejected[0])])  # record order
        return out

    def _stale(self, record: FrameRecord, now: float) -> bool:
        return (
            self.settings.mode == "live"
            and now - record.capture_ts_ns / 1e9 > self.settings.max_frame_age_seconds
        )

    def _model_input(self, record: FrameRecord, image: np.ndarray, model: LoadedModel) -> np.ndarray:
        if self._specs.get(record.camera_id, model.spec) != model.spec:
            self.motion.forget(record.camera_id)  # a new model of another input size: start a new pair
        self._specs[record.camera_id] = model.spec
        current = resize_frame(image, model.spec)
        if not model.spec.motion:
            return current
        previous, unpaired = self.motion.pair(record.camera_id, current, record.capture_ts_ns)
        if unpaired is not None:
            self.metrics.frames_without_motion.labels(record.camera_id, unpaired).inc()
        return np.concatenate([current, previous], axis=0)

    def forget(self, camera_id: str) -> None:
        """Drop what is kept of a camera (it moved to another instance)."""
        self.motion.forget(camera_id)
        self._specs.pop(camera_id, None)
        self.learning.discard(camera_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
