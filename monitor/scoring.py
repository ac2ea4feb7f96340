"""Scoring: the models a service serves, how many batches run at once, and one batch's inference.

Every runtime call runs on a model thread, never on the service's main loop. With one worker (as on
a GPU) that is always the same thread, so a GPU runtime keeps its context and stream.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.config import ConfigError, InputSpec
from model.runtime import Availability, choose_backend
from model.runtime.base import Runtime
from monitor import wire
from monitor.camera import ScoreScale
from monitor.config import ModelSettings
from monitor.frames import FrameError
from monitor.localize import MapScale

if TYPE_CHECKING:
    from monitor.intake import Frame

CONCURRENT_BACKENDS = ("onnxruntime", "torch")  # runtimes whose calls may run on several threads at once
# `model.workers: auto` on a CPU. Measured on 2 cores (benchmarks/stream.py): ONNX Runtime with 2
# intra-op threads keeps ~1.35 cores busy; two workers of one thread each were the faster service in
# every round (121-155 against 98-142 frames/s).
AUTO_CPU_WORKERS = 2


@dataclass(frozen=True)
class ModelPlan:
    """How the model runs: `workers` batches at once, each call on `threads` CPU threads."""

    workers: int
    threads: int | None  # None: the backend's default


def plan_model(
    settings: ModelSettings, have: Availability | None = None, cores: int | None = None
) -> ModelPlan:
    """Resolve `model.workers: auto` (and, with it, unset threads) for this machine.

    auto is 1 on a GPU (TensorRT, or a CUDA device) and for backends that cannot be called from
    several threads; on a CPU with at least AUTO_CPU_WORKERS cores it is AUTO_CPU_WORKERS, each with
    an equal share of the cores unless `model.threads` says otherwise. A number is taken as given.
    """
    if settings.workers != "auto":
        return ModelPlan(settings.workers, settings.threads)
    have = have or Availability.probe()
    cores = cores or len(os.sched_getaffinity(0))
    backend, _ = choose_backend(settings.backend, have)
    if settings.device:
        on_gpu = settings.device.startswith("cuda")
    else:  # as open_runtime chooses: a GPU when the backend has one
        on_gpu = {"torch": have.cuda, "onnxruntime": have.onnxruntime_cuda}.get(backend, True)
    if on_gpu or backend not in CONCURRENT_BACKENDS or cores < AUTO_CPU_WORKERS:
        return ModelPlan(1, settings.threads)
    return ModelPlan(AUTO_CPU_WORKERS, settings.threads or cores // AUTO_CPU_WORKERS)


def workers_for(settings: ModelSettings, runtime: Runtime) -> int:
    """`model.workers` resolved for an opened runtime: auto stays 1 for a runtime other than the one
    planned for (a GPU, or a backend that cannot be called concurrently)."""
    workers = plan_model(settings).workers
    if settings.workers == "auto" and (runtime.backend not in CONCURRENT_BACKENDS or runtime.device != "cpu"):
        return 1
    return workers


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """An opened model as the service uses it: the runtime, its wire identity and its score scales.

    Compared by identity: frames batch together only when they go to the same loaded model.
    """

    runtime: Runtime
    info: wire.ModelInfo
    score_scale: ScoreScale
    map_scale: MapScale
    spec: InputSpec

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> LoadedModel:
        """Wrap an opened runtime.

        Raises:
            ValueError: the model has no calibration (its scores cannot be normalized).
        """
        served = runtime.model
        if served.calibration is None:
            raise ValueError("the model has no calibration: run `anomon calibrate` on its checkpoint first")
        info = wire.ModelInfo(
            name=served.name,
            version=served.version,
            backend=runtime.backend,
            precision=served.precision,
            sha256=served.sha256,
        )
        # Models without a map calibration: the frame calibration is in the same standardized units.
        map_scale = MapScale.from_calibration(served.map_calibration or served.calibration)
        return cls(runtime, info, served.calibration, map_scale, served.config.input)


@dataclass
class Inference:
    """A batch back from a model thread: per frame its raw score and map, or why it has none."""

    frames: list[Frame]
    model: LoadedModel
    started: float  # time.time() when the batch went into the model
    seconds: float  # the model's time on the batch (with the frame-by-frame retries)
    outputs: list[tuple[float, np.ndarray] | FrameError]
    batch_error: str | None = None  # the batch call failed and was retried frame by frame


def infer_batch(model: LoadedModel, frames: list[Frame]) -> Inference:
    """Score a batch on one model; a failing batch is retried frame by frame, so that one bad frame
    is dead-lettered alone and the others are still scored."""
    runtime = model.runtime
    started, clock = time.time(), time.perf_counter()
    try:
        scores, maps = runtime.infer(np.stack([f.model_input for f in frames]))
        outputs: list[tuple[float, np.ndarray] | FrameError] = [
            (float(s), m) for s, m in zip(scores, maps, strict=True)
        ]
        return Inference(frames, model, started, time.perf_counter() - clock, outputs)
    except Exception as err:
        batch_error = str(err)[:200] or type(err).__name__
    outputs = []
    for frame in frames:
        try:
            score, amap = runtime.infer(frame.model_input[None])
            outputs.append((float(score[0]), amap[0]))
        except Exception as err:
            outputs.append(FrameError(wire.Reason.INFERENCE_FAILED, str(err)[:200] or type(err).__name__))
    return Inference(frames, model, started, time.perf_counter() - clock, outputs, batch_error)


def by_model(frames: list[Frame]) -> list[tuple[LoadedModel, list[Frame]]]:
    """Group frames by the model that scores them, in order of first appearance (a camera's frames
    go to one model, so each camera's frames stay in order within its group)."""
    groups: dict[int, tuple[LoadedModel, list[Frame]]] = {}
    for frame in frames:
        groups.setdefault(id(frame.model), (frame.model, []))[1].append(frame)
    return list(groups.values())


class ModelWorkers:
    """The model threads: up to `workers` batches scored at once.

    Args:
        workers: how many batches may be in the models at once.
        backend: the runtime backend, to refuse concurrency it does not support.
    """

    def __init__(self, workers: int, backend: str) -> None:
        if workers > 1 and backend not in CONCURRENT_BACKENDS:
            raise ConfigError(
                f"field 'model.workers': {workers} needs a runtime that scores batches concurrently "
                f"({', '.join(CONCURRENT_BACKENDS)}), not {backend}; set it to 1"
            )
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="anomon-model")

    def submit(self, frames: list[Frame]) -> list[Future[Inference]]:
        """One inference per model among `frames` (cameras sharing a model batch together)."""
        return [self._pool.submit(infer_batch, model, group) for model, group in by_model(frames)]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
