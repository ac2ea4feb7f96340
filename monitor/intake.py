"""Intake: polled records to model inputs.

Parse each record (a bad one is rejected with its reason, for the dead-letter topic), drop stale
frames in live mode, decode and resize to the input size of the camera's model in a thread pool
(OpenCV releases the GIL; `start` returns while they run, `finish` waits for them), and pair each
frame with an earlier one of its camera for motion (`monitor.pairing`; a frame skipped here is
reported to it, so that the next is not paired across the skip). No Kafka I/O: records in, frames
and rejects out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
_Decoded = tuple[np.ndarray, np.ndarray] | FrameError  # the decoded frame and its resize, or why not


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


@dataclass
class Intaking:
    """A batch of records whose frames are being decoded (`Intake.start`)."""

    records: Sequence[ConsumedRecord]
    result: IntakeResult  # filled in by parsing; the frames and decode failures come with `finish`
    # In record order: a frame being decoded, or the camera of a record skipped here (pairing must
    # see the skip between the frames around it).
    steps: list[tuple[_Wanted, Future[_Decoded]] | str]
    received: float  # time.time() when it was started


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
        return self.finish(self.start(records))

    def start(self, records: Sequence[ConsumedRecord]) -> Intaking:
        """Parse and filter a batch of records and start decoding and resizing its frames on the pool;
        `finish` pairs them. The service publishes earlier batches meanwhile."""
        intaking = Intaking(records, IntakeResult(), [], time.time())
        out = intaking.result
        for consumed in records:
            try:
                record = parse_record(consumed, self.settings.max_frame_bytes)
            except FrameError as err:
                out.rejected.append((consumed, err))
                if consumed.key:  # the record may still name its camera
                    intaking.steps.append(consumed.key.decode("utf-8", "replace"))
                continue
            out.consumed += 1
            self.metrics.frames_consumed.labels(record.camera_id).inc()
            if self._stale(record, intaking.received):
                out.dropped += 1
                self.metrics.frames_dropped.labels(record.camera_id, "stale").inc()
                intaking.steps.append(record.camera_id)
                continue
            model = self.model_for(record.camera_id)
            if model is None:
                out.learning += 1
                self.metrics.frames_learning.labels(record.camera_id).inc()
                self.learning.add(record.camera_id)
                out.learning_frames[record.camera_id] = record
                intaking.steps.append(record.camera_id)
                continue
            self.learning.discard(record.camera_id)
            wanted = (consumed, record, model)
            intaking.steps.append((wanted, self._pool.submit(self._decode, record, model)))
        return intaking

    def _decode(self, record: FrameRecord, model: LoadedModel) -> _Decoded:
        """The decoded frame and its resize to the model's input (OpenCV releases the GIL)."""
        try:
            image = decode_frame(record, self.settings.max_pixels, grayscale=not model.spec.color)
        except FrameError as err:
            return err
        return image, resize_frame(image, model.spec)

    def finish(self, intaking: Intaking) -> IntakeResult:
        """Wait for a started batch's decodes and pair its frames with their cameras' earlier ones, in
        record order. Batches are finished in the order they were started (pairing follows it)."""
        out = intaking.result
        for step in intaking.steps:
            if isinstance(step, str):  # the camera of a record skipped here: no pair across it
                self.motion.skipped(step)
                continue
            (consumed, record, model), decoding = step
            decoded = decoding.result()
            if isinstance(decoded, FrameError):
                out.rejected.append((consumed, decoded))
                self.motion.skipped(record.camera_id)
                continue
            image, resized = decoded
            model_input = self._model_input(record, resized, model)
            out.frames.append(Frame(consumed, record, image, model_input, model, intaking.received))
        order = {id(r): i for i, r in enumerate(intaking.records)}
        out.rejected.sort(key=lambda rejected: order[id(rejected[0])])  # record order
        return out

    def _stale(self, record: FrameRecord, now: float) -> bool:
        return (
            self.settings.mode == "live"
            and now - record.capture_ts_ns / 1e9 > self.settings.max_frame_age_seconds
        )

    def _model_input(self, record: FrameRecord, current: np.ndarray, model: LoadedModel) -> np.ndarray:
        """`current` (the frame at the model's input size) stacked with its pair, for motion models."""
        if self._specs.get(record.camera_id, model.spec) != model.spec:
            self.motion.forget(record.camera_id)  # a new model of another input size: start a new pair
        self._specs[record.camera_id] = model.spec
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
