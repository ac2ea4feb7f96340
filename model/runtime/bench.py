"""Latency and throughput of a runtime: what `anomon bench` and benchmarks/runtimes.py measure."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from model.runtime.base import Runtime


@dataclass(frozen=True)
class LatencyStats:
    """Per-batch latency percentiles and the frame rates they imply."""

    batch: int
    calls: int
    p50_ms: float
    p99_ms: float
    fps: float  # batch / median latency: the typical call's rate
    throughput_fps: float  # frames of all calls / their total time: what a stream of calls sustains

    @classmethod
    def from_seconds(cls, batch: int, seconds: list[float]) -> LatencyStats:
        ms = np.asarray(seconds) * 1e3
        p50 = float(np.percentile(ms, 50))
        throughput = batch * len(ms) * 1e3 / float(ms.sum())
        return cls(batch, len(ms), p50, float(np.percentile(ms, 99)), batch * 1e3 / p50, throughput)


def time_calls(runtime: Runtime, frames: np.ndarray, calls: int) -> list[float]:
    """Wall-clock seconds of `calls` back-to-back inferences of one batch (outputs on the host)."""
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.infer(frames)
        seconds.append(time.perf_counter() - started)
    return seconds


def sample_frames(runtime: Runtime, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of random uint8 frames at the runtime's input shape."""
    shape = (batch, *runtime.model.input_shape)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def measure(runtime: Runtime, batch: int, calls: int = 30, warmup: int = 3) -> LatencyStats:
    """Warm up, then time `calls` inferences of one batch size."""
    frames = sample_frames(runtime, batch)
    time_calls(runtime, frames, warmup)
    return LatencyStats.from_seconds(batch, time_calls(runtime, frames, calls))


def measure_concurrent(
    runtime: Runtime, batch: int, workers: int, calls: int = 30, warmup: int = 3
) -> LatencyStats:
    """`workers` threads calling one runtime at once, `calls` each (as `model.workers` runs it).

    Latency percentiles are per call; the throughput is every call's frames over the wall time.
    """
    frames = sample_frames(runtime, batch)
    time_calls(runtime, frames, warmup)
    seconds: list[list[float]] = [[] for _ in range(workers)]
    threads = [
        threading.Thread(target=lambda out=out: out.extend(time_calls(runtime, frames, calls)))
        for out in seconds
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stats = LatencyStats.from_seconds(batch, [s for worker in seconds for s in worker])
    return replace(stats, throughput_fps=batch * calls * workers / wall)
