"""Scoring: batches per model on a real ONNX Runtime session, a bad frame failing alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.config import ConfigError
from monitor.config import IntakeSettings
from monitor.frames import FrameError
from monitor.intake import Frame, Intake
from monitor.metrics import ServiceMetrics
from monitor.scoring import LoadedModel, ModelWorkers, by_model, infer_batch
from monitor.wire import Reason
from tests.monitor.parts import loaded, record


@pytest.fixture(scope="module")
def models(tiny_artifact: Path) -> tuple[LoadedModel, LoadedModel]:
    return loaded(tiny_artifact), loaded(tiny_artifact)


def _frames(model: LoadedModel, camera: str, count: int) -> list[Frame]:
    intake = Intake(IntakeSettings(mode="replay"), lambda c: model, ServiceMetrics())
    return intake.take([record(camera=camera, index=i) for i in range(count)]).frames


def test_frames_group_by_model_in_order(models: tuple[LoadedModel, LoadedModel]) -> None:
    a, b = models
    fa, fb = _frames(a, "a", 3), _frames(b, "b", 2)
    mixed = [fa[0], fb[0], fa[1], fb[1], fa[2]]
    groups = by_model(mixed)
    assert [(m is a, [f.record.frame_index for f in g]) for m, g in groups] == [
        (True, [0, 1, 2]),
        (False, [0, 1]),
    ]


def test_a_frame_that_fails_alone_is_reported_and_the_others_scored_as_in_a_batch(
    models: tuple[LoadedModel, LoadedModel],
) -> None:
    model = models[0]
    frames = _frames(model, "cam", 3)
    whole = infer_batch(model, frames)
    assert whole.batch_error is None and len(whole.outputs) == 3
    frames[1].model_input = frames[1].model_input[:, :-1]  # a wrong shape: the batch cannot stack
    retried = infer_batch(model, frames)
    assert retried.batch_error is not None
    failed = retried.outputs[1]
    assert isinstance(failed, FrameError) and failed.reason is Reason.INFERENCE_FAILED
    for i in (0, 2):
        got, want = retried.outputs[i], whole.outputs[i]
        assert not isinstance(got, FrameError) and not isinstance(want, FrameError)
        assert got[0] == pytest.approx(want[0], rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)


def test_workers_submit_one_inference_per_model(models: tuple[LoadedModel, LoadedModel]) -> None:
    a, b = models
    workers = ModelWorkers(2, "onnxruntime")
    try:
        futures = workers.submit([*_frames(a, "a", 2), *_frames(b, "b", 1)])
        results = [f.result(timeout=30) for f in futures]
    finally:
        workers.shutdown()
    assert [(r.model is a, len(r.frames)) for r in results] == [(True, 2), (False, 1)]


def test_concurrent_workers_are_refused_for_a_backend_that_cannot_take_them() -> None:
    with pytest.raises(ConfigError, match=r"model\.workers.*set it to 1"):
        ModelWorkers(2, "tensorrt")
