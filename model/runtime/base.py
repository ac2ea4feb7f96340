"""The runtime interface: every backend serves uint8 frames -> (raw scores, anomaly maps)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from model.calibration import Calibration
from model.config import ExperimentConfig


class BackendUnavailableError(RuntimeError):
    """A backend cannot run here (library or device missing); the message says what is missing."""


@dataclass(frozen=True)
class ServedModel:
    """What a caller needs to know about the model a runtime serves."""

    name: str
    version: str
    precision: str
    config: ExperimentConfig
    calibration: Calibration | None
    map_calibration: Calibration | None
    input_shape: tuple[int, int, int]  # [C, H, W]; frames are uint8
    map_shape: tuple[int, int]
    sha256: str  # the weights' SHA-256, as recorded in the artifact: which model this is


class Runtime(ABC):
    """One loaded model on one backend.

    Attributes:
        backend: the backend's name ("torch", "onnxruntime", "tensorrt").
        device: where it runs, e.g. "cpu", "cuda:0 (NVIDIA H100)".
        model: the served model's identity, config and calibration.
    """

    backend: str
    device: str
    model: ServedModel

    @abstractmethod
    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score a batch.

        Args:
            frames: uint8 [B, C, H, W] at the model's input size.

        Returns:
            raw scores float32 [B] and anomaly maps float32 [B, h, w].
        """

    def check_input(self, frames: np.ndarray) -> np.ndarray:
        """Validate a batch's dtype and shape; returns it C-contiguous."""
        expected = self.model.input_shape
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"{self.backend} runtime expects uint8 frames [B, {', '.join(map(str, expected))}], "
                f"got {frames.dtype} {list(frames.shape)}"
            )
        return np.ascontiguousarray(frames)

    def close(self) -> None:  # noqa: B027 (optional hook: most backends free everything on GC)
        """Release the backend's resources (sessions, engines, device memory)."""

    def describe(self) -> str:
        """One line: model, version, backend, precision and device."""
        m = self.model
        return f"{m.name} {m.version} on {self.backend} ({m.precision}, {self.device})"
