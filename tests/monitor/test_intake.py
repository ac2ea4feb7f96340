"""Intake: records to model inputs; bad records rejected with their reason, stale frames dropped, and
motion pairs never formed across a skipped frame."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.data import resize_frame
from monitor.config import IntakeSettings
from monitor.intake import Intake
from monitor.metrics import ServiceMetrics
from monitor.scoring import LoadedModel
from monitor.wire import Reason
from tests.monitor.parts import jpeg, loaded, record


@pytest.fixture(scope="module")
def model(tiny_artifact: Path) -> LoadedModel:
    return loaded(tiny_artifact)


def _intake(model: LoadedModel, **settings: object) -> tuple[Intake, ServiceMetrics]:
    metrics = ServiceMetrics()
    return Intake(IntakeSettings.model_validate(settings), lambda camera: model, metrics), metrics


def _paired_with_itself(model_input: np.ndarray) -> bool:
    half = model_input.shape[0] // 2
    return bool(np.array_equal(model_input[:half], model_input[half:]))


def test_frames_come_out_at_the_model_input_paired_with_the_previous_frame(model: LoadedModel) -> None:
    intake, metrics = _intake(model, mode="replay")
    taken = intake.take([record(index=i) for i in range(3)])
    assert [f.record.frame_index for f in taken.frames] == [0, 1, 2]
    assert all(f.model_input.shape == model.runtime.model.input_shape for f in taken.frames)
    assert all(f.model is model for f in taken.frames)
    assert [_paired_with_itself(f.model_input) for f in taken.frames] == [True, False, False]
    half = taken.frames[0].model_input.shape[0] // 2
    # The second frame's earlier half is the first frame as resized.
    assert np.array_equal(taken.frames[1].model_input[half:], taken.frames[0].model_input[:half])
    assert (taken.consumed, taken.dropped, taken.rejected) == (3, 0, [])
    assert metrics.frames_without_motion.labels("gate-1", "first")._value.get() == 1


def test_bad_records_are_rejected_with_their_reason_and_break_the_motion_pair(model: LoadedModel) -> None:
    intake, _ = _intake(model, mode="replay")
    records = [
        record(index=0),
        record(index=1, value=jpeg()[:-2]),  # parses, does not decode
        record(index=2),
        record(index=3, key=b"bad key!"),  # refused at parse
        record(index=4, camera="other"),
    ]
    taken = intake.take(records)
    assert [(r.offset, e.reason) for r, e in taken.rejected] == [
        (1, Reason.UNDECODABLE),
        (3, Reason.BAD_KEY),
    ]
    by_index = {f.record.frame_index: f for f in taken.frames}
    assert sorted(by_index) == [0, 2, 4]
    # Frame 2 follows the undecodable frame 1: paired with itself, not with frame 0 across the gap.
    assert _paired_with_itself(by_index[2].model_input)


def test_live_mode_drops_stale_frames_and_the_next_frame_is_not_paired_across_them(
    model: LoadedModel,
) -> None:
    intake, metrics = _intake(model, mode="live", max_frame_age_seconds=2.0)
    now = time.time()
    taken = intake.take(
        [
            record(index=0, capture_s=now - 0.2),
            record(index=1, capture_s=now - 60),
            record(index=2, capture_s=now),
        ]
    )
    assert [f.record.frame_index for f in taken.frames] == [0, 2]
    assert (taken.consumed, taken.dropped) == (3, 1)
    assert metrics.frames_dropped.labels("gate-1", "stale")._value.get() == 1
    assert _paired_with_itself(taken.frames[1].model_input)


def test_a_forgotten_camera_starts_a_new_pair(model: LoadedModel) -> None:
    intake, _ = _intake(model, mode="replay")
    intake.take([record(index=0)])
    intake.forget("gate-1")
    assert _paired_with_itself(intake.take([record(index=1)]).frames[0].model_input)


def _reference_inputs(model: LoadedModel, records: list) -> list[np.ndarray]:
    """Each frame's model input the plain way, one after another: decode, resize, stack with the
    camera's previous frame as resized (itself for a camera's first frame)."""
    spec = model.spec
    previous: dict[bytes, np.ndarray] = {}
    out = []
    for r in records:
        image = cv2.imdecode(np.frombuffer(r.value, np.uint8), cv2.IMREAD_GRAYSCALE)
        current = resize_frame(image, spec)
        out.append(np.concatenate([current, previous.get(r.key, current)], axis=0))
        previous[r.key] = current
    return out


def test_batches_started_before_earlier_ones_finish_give_the_inputs_of_one_batch_after_another(
    model: LoadedModel,
) -> None:
    # As the service runs it: batch B decodes while batch A is finished (published); pairing
    # follows the order the batches were started in.
    assert not model.spec.color and model.spec.motion
    records = [record(camera=f"cam-{i % 3}", index=i, offset=i) for i in range(12)]
    intake, _ = _intake(model, mode="replay")
    first, second = intake.start(records[:5]), intake.start(records[5:])
    frames = intake.finish(first).frames + intake.finish(second).frames
    assert [f.record.offset for f in frames] == list(range(12))
    reference = _reference_inputs(model, records)
    assert all(np.array_equal(f.model_input, ref) for f, ref in zip(frames, reference, strict=True))
    # The same as the whole as one batch on a fresh intake.
    whole = _intake(model, mode="replay")[0].take(records).frames
    assert all(np.array_equal(a.model_input, b.model_input) for a, b in zip(frames, whole, strict=True))
    assert all(
        np.array_equal(f.image, cv2.imdecode(np.frombuffer(r.value, np.uint8), 0))
        for f, r in zip(frames, records, strict=True)
    )
