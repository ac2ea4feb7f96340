"""ONNX Runtime runtime: the exported graph on the CUDA provider when present, else the CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from model.export import ArtifactMeta, load_artifact_meta
from model.runtime.base import BackendUnavailableError, Runtime, ServedModel


def served_model(meta: ArtifactMeta) -> ServedModel:
    """The runtime-facing view of an exported artifact's metadata."""
    return ServedModel(
        name=meta.name,
        version=meta.version,
        precision=meta.precision,
        config=meta.config,
        calibration=meta.calibration,
        map_calibration=meta.map_calibration,
        input_shape=meta.input_shape,
        map_shape=meta.map_shape,
        sha256=meta.weights_sha256,
    )


_shared_arena_lock = threading.Lock()
_shared_arena = False


def use_shared_cpu_arena(ort: Any, options: Any) -> None:
    """Have a CPU session allocate from one arena shared by every session of this process.

    Each session otherwise keeps its own arena, sized by its largest batch and never given back: a
    service serving a model per camera paid it once per model (measured with 8 ONNX Runtime fp32
    AnoMem exports after one batch of 8 each: 589 MB of RSS with their own arenas, 212 MB sharing one;
    benchmarks/fleet.py). Only as many batches as `model.workers` run at once, so one arena holds them.
    """
    global _shared_arena
    with _shared_arena_lock:
        if not _shared_arena:
            arena = ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR
            cpu = ort.OrtMemoryInfo("Cpu", arena, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, -1, -1, -1))  # the default arena
            _shared_arena = True
    options.add_session_config_entry("session.use_env_allocators", "1")


class OrtRuntime(Runtime):
    """Serves DIR/model.onnx with ONNX Runtime after checking it against DIR/model.json.

    Args:
        artifact_dir: folder written by `anomon export`.
        device: "cpu", or "cuda" to require the CUDA execution provider; None takes CUDA when present.
        threads: intra-op threads (None: ONNX Runtime's default, all cores).
    """

    backend = "onnxruntime"

    def __init__(
        self, artifact_dir: str | Path, device: str | None = None, threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailableError(f"onnxruntime is not installed ({err})") from None
        meta = load_artifact_meta(artifact_dir)
        available = ort.get_available_providers()
        want_cuda = device is not None and device.startswith("cuda")
        if want_cuda and "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
            )
        use_cuda = "CUDAExecutionProvider" in available and device != "cpu"
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # constant-folding notices are not the operator's concern
        # No busy-waiting between runs: the service's decode threads and other processes need the
        # cores (measured on 2 shared cores: batch 1 took 35 ms with spinning, 19 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        if not use_cuda:
            use_shared_cpu_arena(ort, options)
        self._session = ort.InferenceSession(
            str(Path(artifact_dir) / meta.onnx_file), options, providers=providers
        )
        self._input = meta.input_name
        self._outputs = list(meta.output_names)
        self.model = served_model(meta)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = self.check_input(frames)
        score, amap = self._session.run(self._outputs, {self._input: frames})
        return np.asarray(score, dtype=np.float32), np.asarray(amap, dtype=np.float32)[:, 0]
