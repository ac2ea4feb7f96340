"""TensorRT runtime: build (or load a verified cached) engine from the exported ONNX graph and run it.

TensorRT 10: weakly typed networks with builder precision flags (FP16; INT8 for Q/DQ graphs).
TensorRT 11: networks are strongly typed, precision comes from the graph itself (the FP16 graph, the
Q/DQ graph). Inference uses name-based tensor addresses and `execute_async_v3` on a CUDA stream,
with torch tensors as the device buffers.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from model.export import load_artifact_meta
from model.runtime.base import BackendUnavailableError, Runtime
from model.runtime.engine_cache import EngineKey, ShapeProfile, cached_or_built
from model.runtime.onnxruntime_backend import served_model

log = logging.getLogger(__name__)

# TensorRT data type name -> torch dtype name (kept as strings so this table is testable without either).
TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype_name(trt_dtype_name: str) -> str:
    """The torch dtype for a TensorRT data type name (e.g. "HALF" -> "float16")."""
    try:
        return TRT_TO_TORCH[trt_dtype_name]
    except KeyError:
        raise ValueError(f"TensorRT data type {trt_dtype_name} has no torch buffer mapping") from None


def tensorrt_major(version: str) -> int:
    """Major version of a TensorRT version string."""
    return int(version.split(".")[0])


def builder_flags(major: int, precision: str) -> list[str]:
    """BuilderFlag names to set: precision flags on TensorRT 10, none on 11 (strongly typed)."""
    if major >= 11:
        return []
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailableError(f"TensorRT is not installed ({err}); use onnxruntime") from None
    return trt


class TensorRTRuntime(Runtime):
    """Serves an exported artifact with a TensorRT engine, cached next to it.

    Args:
        artifact_dir: folder written by `anomon export` (its precision decides the engine's).
        cache_dir: engine and timing cache folder (default: DIR/engines); one folder can hold the
            engines of many artifacts (a file name binds each to its graph, GPU and TensorRT).
        profile_batches: (min, opt, max) batch of the optimization profile.
        version_compatible: build a version-compatible engine that the lean runtime can run.
        device: CUDA device index.
    """

    backend = "tensorrt"

    def __init__(
        self,
        artifact_dir: str | Path,
        cache_dir: str | Path | None = None,
        profile_batches: tuple[int, int, int] = (1, 8, 32),
        version_compatible: bool = False,
        device: int = 0,
    ) -> None:
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("TensorRT needs a CUDA GPU and none is visible")
        self._torch = torch
        self._trt = trt
        meta = load_artifact_meta(artifact_dir)
        if meta.precision == "int8" and meta.quantization.get("target") != "tensorrt":
            raise BackendUnavailableError(
                f"{artifact_dir} is an INT8 graph for ONNX Runtime on CPU (asymmetric activations); "
                "re-export with --precision int8 --int8-target tensorrt"
            )
        self.model = served_model(meta)
        self._dev = torch.device("cuda", device)
        props = torch.cuda.get_device_properties(self._dev)
        self.device = f"cuda:{device} ({props.name})"
        self.profile = ShapeProfile(meta.input_name, meta.input_shape, *profile_batches)
        key = EngineKey(
            onnx_sha256=meta.onnx_sha256,
            gpu_name=props.name,
            compute_capability=f"{props.major}{props.minor}",
            tensorrt_version=trt.__version__,
            precision=meta.precision,
            profile=self.profile,
            version_compatible=version_compatible,
        )
        cache = Path(cache_dir) if cache_dir else Path(artifact_dir) / "engines"
        onnx_path = Path(artifact_dir) / meta.onnx_file
        plan = cached_or_built(
            cache,
            key,
            lambda: self._build(onnx_path, meta.precision, cache / "timing.cache", version_compatible),
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if version_compatible:
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendUnavailableError("TensorRT could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(self._dev)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = meta.input_name
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _build(self, onnx_path: Path, precision: str, timing_path: Path, version_compatible: bool) -> bytes:
        trt = self._trt
        major = tensorrt_major(trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # 10.x: weak typing + precision flags; 11.x: always strongly typed (create flags ignored).
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailableError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        for flag in builder_flags(major, precision):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
        profile = builder.create_optimization_profile()
        profile.set_shape(self.profile.input_name, *self.profile.shapes())
        config.add_optimization_profile(profile)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        log.info("building TensorRT %s engine for %s (minutes on first run)", precision, onnx_path)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendUnavailableError(f"TensorRT failed to build an engine from {onnx_path}")
        with contextlib.suppress(OSError):  # an unwritable cache is reported once, for the engine
            timing_path.parent.mkdir(parents=True, exist_ok=True)
            timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        frames = self.check_input(frames)
        if not self.profile.admits(len(frames)):
            raise ValueError(
                f"batch {len(frames)} is outside the engine's profile "
                f"{self.profile.min_batch}..{self.profile.max_batch}"
            )
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(frames).to(self._dev, non_blocking=True)
            self._context.set_input_shape(self._input, tuple(x.shape))
            self._context.set_tensor_address(self._input, x.data_ptr())
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                dtype = getattr(torch, torch_dtype_name(self._engine.get_tensor_dtype(name).name))
                outputs[name] = torch.empty(shape, dtype=dtype, device=self._dev)
                self._context.set_tensor_address(name, outputs[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self._stream.synchronize()
        score, amap = (outputs[n] for n in ("score", "anomaly_map"))
        return score.float().cpu().numpy(), amap[:, 0].float().cpu().numpy()

    def close(self) -> None:
        self._context = None
        self._engine = None
