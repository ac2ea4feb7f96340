"""One interface over the backends; `open_runtime` is the one place that picks and opens one."""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model.runtime.base import BackendUnavailableError, Runtime, ServedModel

__all__ = [
    "BACKENDS",
    "Availability",
    "BackendUnavailableError",
    "Runtime",
    "ServedModel",
    "choose_backend",
    "open_runtime",
]

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Availability:
    """What this machine offers the backends."""

    cuda: bool
    tensorrt: bool
    onnxruntime: bool
    onnxruntime_cuda: bool

    @classmethod
    def probe(cls) -> Availability:
        import torch

        ort_cuda = False
        has_ort = importlib.util.find_spec("onnxruntime") is not None
        if has_ort:
            import onnxruntime as ort

            ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        return cls(
            cuda=torch.cuda.is_available(),
            tensorrt=importlib.util.find_spec("tensorrt") is not None,
            onnxruntime=has_ort,
            onnxruntime_cuda=ort_cuda,
        )


def choose_backend(requested: str, have: Availability) -> tuple[str, str]:
    """Resolve a backend name ("auto" included) to the one to use, with the reason.

    auto: TensorRT when it and a GPU are present, else ONNX Runtime (CUDA, then CPU), else PyTorch.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested, "requested"
    if have.tensorrt and have.cuda:
        return "tensorrt", "TensorRT and a CUDA GPU are present"
    if have.onnxruntime:
        where = "CUDA" if have.onnxruntime_cuda else "CPU"
        missing = "no TensorRT" if have.cuda else "no CUDA GPU"
        return "onnxruntime", f"{missing}; ONNX Runtime on {where}"
    return "torch", "neither TensorRT nor ONNX Runtime is available"


def _open_exported(
    name: str, export_dir: Path, device: str | None, threads: int | None, engine_cache: Path | None
) -> Runtime:
    if name == "onnxruntime":
        from model.runtime.onnxruntime_backend import OrtRuntime

        return OrtRuntime(export_dir, device=device, threads=threads)
    from model.runtime.tensorrt_backend import TensorRTRuntime

    index = int(device.split(":")[1]) if device and ":" in device else 0
    return TensorRTRuntime(export_dir, cache_dir=engine_cache, device=index)


def open_runtime(
    artifact: str | Path,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    engine_cache: str | Path | None = None,
) -> Runtime:
    """Open a model on a backend.

    Args:
        artifact: an export folder (model.onnx + model.json + checkpoint) or a checkpoint file
            (ONNX backends export it to a temporary folder, removed once the runtime is built).
        backend: "auto", "torch", "onnxruntime" or "tensorrt".
        device: "cpu" or "cuda[:N]"; None lets the backend choose (GPU when present).
        threads: CPU threads for the torch and ONNX Runtime backends.
        engine_cache: the TensorRT backend's engine folder (default: the export folder's `engines/`;
            one folder holds the engines of any number of artifacts).

    Raises:
        BackendUnavailableError: the backend cannot run here; the message says what is missing.
    """
    path = Path(artifact)
    if not path.exists():
        raise FileNotFoundError(f"model artifact not found: {path}")
    name, reason = choose_backend(backend, Availability.probe())
    log.info("backend %s (%s)", name, reason)
    cache = Path(engine_cache) if engine_cache is not None else None
    if name == "torch":
        import torch

        from model.export import CHECKPOINT_FILE, load_artifact_meta
        from model.runtime.torch_backend import TorchRuntime

        on_gpu = device.startswith("cuda") if device else torch.cuda.is_available()
        checkpoint, half = path, False
        if path.is_dir():
            meta = load_artifact_meta(path, verify=False)
            checkpoint, half = path / CHECKPOINT_FILE, on_gpu and meta.precision == "fp16"
        return TorchRuntime(
            checkpoint,
            device="cuda" if on_gpu and not device else (device or "cpu"),
            half=half,
            cuda_graphs=on_gpu,
            threads=threads,
        )
    if path.is_dir():
        return _open_exported(name, path, device, threads, cache)
    # A checkpoint file: export it to a folder that lives only while the runtime is built (the
    # session or engine holds the graph in memory afterwards; nothing is left behind in /tmp).
    from model.export import export_artifact

    with tempfile.TemporaryDirectory(prefix="anomon-export-") as tmp:
        log.info("exporting %s to a temporary folder (fp32) for the %s backend", path, name)
        export_artifact(path, Path(tmp), "fp32")
        return _open_exported(name, Path(tmp), device, threads, cache)
