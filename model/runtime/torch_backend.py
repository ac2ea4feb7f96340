"""PyTorch runtime: eager on CPU; on CUDA optionally FP16 and CUDA graphs per batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.runtime.base import BackendUnavailableError, Runtime, ServedModel


class TorchRuntime(Runtime):
    """Serves a checkpoint with PyTorch.

    Args:
        checkpoint: a checkpoint file written by `anomon train`.
        device: "cpu", "cuda" or "cuda:N".
        half: run in FP16 (CUDA only).
        cuda_graphs: capture one CUDA graph per batch size on first use (CUDA only): removes the
            per-kernel launch cost that dominates small batches.
        threads: CPU threads for torch (None keeps torch's setting).
    """

    backend = "torch"

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        half: bool = False,
        cuda_graphs: bool = False,
        threads: int | None = None,
    ) -> None:
        from model.pipeline import load_model

        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch device {device!r} requested but CUDA is not available")
        if (half or cuda_graphs) and self._device.type != "cuda":
            raise BackendUnavailableError("torch FP16 and CUDA graphs need a CUDA device (use --device cuda)")
        if threads:
            torch.set_num_threads(threads)
        net, meta = load_model(checkpoint)
        self._net = net.to(self._device)
        self._half = half
        self._use_graphs = cuda_graphs
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        spec = meta.config.input
        with torch.no_grad():
            _, m = self._net(
                torch.zeros(
                    (1, spec.channels, spec.height, spec.width), dtype=torch.uint8, device=self._device
                )
            )
        self.model = ServedModel(
            name=meta.name,
            version=meta.version,
            precision="fp16" if half else "fp32",
            config=meta.config,
            calibration=meta.calibration,
            map_calibration=meta.map_calibration,
            input_shape=(spec.channels, spec.height, spec.width),
            map_shape=(int(m.shape[-2]), int(m.shape[-1])),
            sha256=meta.weights_sha256,
        )
        self.device = (
            str(self._device)
            if self._device.type == "cpu"
            else (f"{self._device} ({torch.cuda.get_device_name(self._device)})")
        )

    def _graph_for(self, batch: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]:
        if batch not in self._graphs:
            static_in = torch.zeros((batch, *self.model.input_shape), dtype=torch.uint8, device=self._device)
            stream = torch.cuda.Stream(self._device)
            stream.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):  # warm-up on a side stream before capture, as CUDA graphs require
                    self._forward(static_in)
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                score, amap = self._forward(static_in)
            self._graphs[batch] = (graph, static_in, score, amap)
        return self._graphs[batch]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # FP16 by autocast: convolutions and matmuls in half, reductions and statistics in float32.
        with torch.autocast(device_type=self._device.type, dtype=torch.float16, enabled=self._half):
            score, amap = self._net(x)
        return score, amap

    @torch.no_grad()
    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = self.check_input(frames)
        x = torch.from_numpy(frames)
        if self._use_graphs:
            graph, static_in, score, amap = self._graph_for(len(frames))
            static_in.copy_(x, non_blocking=True)
            graph.replay()
        else:
            score, amap = self._forward(x.to(self._device, non_blocking=True))
        return (
            score.float().cpu().numpy(),
            amap[:, 0].float().cpu().numpy(),
        )

    def close(self) -> None:
        self._graphs.clear()
