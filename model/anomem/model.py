"""AnoMem: multi-scale contrasted Hopfield memories over an encoder, scored by deviation maps.

The module takes uint8 frames at the model's input size (with the previous frame stacked on the
channel axis when the model uses motion), normalizes them itself, and returns the raw anomaly score
and a low-resolution anomaly map: exactly what is exported and served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.anomaly_map import gaussian_kernel, smooth, topk_mean
from model.anomem.detector import DeviationDetector
from model.backbones import build_backbone
from model.config import AnoMemConfig, InputSpec, score_terms
from model.memory import HopfieldMemory
from model.motion import drop_edges, edge_margin, pyramid_speed, sobel_kernels

MOTION_CHANNELS = 2  # per feature cell: mean |frame difference| and mean Lucas-Kanade speed
# The speed term's window in stride-8 cells until training has measured `object_window`.
UNMEASURED_WINDOW = (4, 4)


@dataclass
class Descriptors:
    """Per-scale inputs of the memories for one batch."""

    maps: list[torch.Tensor]  # [B, C_l (+2 motion), h_l, w_l], features L2-normalized over channels
    last_features: torch.Tensor  # encoder output at the coarsest scale, for the instance contrast


class AnoMem(nn.Module):
    """AnoMem network: encoder, one Hopfield memory per used scale, standardized deviation maps."""

    scale_weights: torch.Tensor
    score_weights: torch.Tensor
    term_stats: torch.Tensor
    map_kernel: torch.Tensor
    sobel: torch.Tensor

    def __init__(self, cfg: AnoMemConfig, spec: InputSpec, load_pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        stem = "cifar" if spec.height <= 64 else "imagenet"
        self.encoder = build_backbone(
            cfg.encoder,
            in_chans=spec.frame_channels,
            pretrained=cfg.pretrained and load_pretrained,
            stem=stem,
        )
        if cfg.freeze_encoder:
            self.encoder.freeze()
        # Depthwise convolutions run about 1.7x faster channels-last on CPU (measured at 160x240).
        self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        extra = MOTION_CHANNELS if spec.motion else 0
        self.scales = list(cfg.scales)
        channels = [self.encoder.out_channels[s] + extra for s in self.scales]
        self.memories: list[HopfieldMemory] = nn.ModuleList(  # type: ignore[assignment]
            HopfieldMemory(c, cfg.memories[s].slots, cfg.memories[s].dim, cfg.memories[s].beta)
            for c, s in zip(channels, self.scales, strict=True)
        )
        self.heads = nn.ModuleList(_projection_head(c, cfg.proj_dim) for c in channels)
        self.instance_head = _projection_head(self.encoder.out_channels[max(self.scales)], cfg.proj_dim)
        # Cells pooled per scale (strides 8, 16, 32): the same image area on every grid.
        self.topk_cells = [cfg.topk * 4 ** (2 - s) for s in self.scales]
        weights = cfg.scale_weights or tuple(1.0 / len(self.scales) for _ in self.scales)
        self.register_buffer("scale_weights", torch.tensor(weights, dtype=torch.float32))
        terms = score_terms(cfg, spec)
        score_weights = cfg.score_weights or tuple(1.0 / terms for _ in range(terms))
        self.register_buffer(
            "score_weights", torch.tensor(score_weights, dtype=torch.float32), persistent=False
        )
        # Normal mean (row 0) and std (row 1) of every one-class score term, fitted after stage 1.
        self.register_buffer("term_stats", torch.stack([torch.zeros(terms), torch.ones(terms)]))
        self.register_buffer("map_kernel", gaussian_kernel(cfg.map_sigma))
        self.register_buffer("sobel", sobel_kernels(), persistent=False)
        sizes = self.map_sizes()
        self.map_size = sizes[0]
        for i, (h, w) in enumerate(sizes[1:]):
            self.register_buffer(f"dev_mean_{i}", torch.zeros(1, 1, h, w))
            self.register_buffer(f"dev_std_{i}", torch.ones(1, 1, h, w))
        self.detector = DeviationDetector(
            len(self.scales), head="classifier" if cfg.score == "classifier" else "svdd"
        )

    def map_sizes(self) -> list[tuple[int, int]]:
        """Sizes of the stride-8 anomaly map followed by each used scale's deviation map."""
        with torch.no_grad():
            probe = torch.zeros(1, self.spec.frame_channels, self.spec.height, self.spec.width)
            was_training = self.encoder.training
            self.encoder.eval()
            feats = self.encoder(probe)
            self.encoder.train(was_training)
        finest = (math.ceil(self.spec.height / 8), math.ceil(self.spec.width / 8))
        return [finest] + [(feats[s].shape[-2], feats[s].shape[-1]) for s in self.scales]

    def dev_stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"dev_mean_{i}"), getattr(self, f"dev_std_{i}")

    def split_input(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 [B, C, H, W] -> (frame in [0, 1], motion field or None).

        The motion field [B, 2, H, W] holds |frame - previous| averaged over colour (less
        `motion_noise_floor`) and the Lucas-Kanade optical-flow speed (see `_pool_motion`); 0 near the
        frame's edges (`model.motion.edge_margin`).
        """
        x = frames.float() / 255.0
        c = self.spec.frame_channels
        if not self.spec.motion:
            return x, None
        current, previous = x[:, :c], x[:, c:]
        temporal = (current - previous).abs().mean(dim=1, keepdim=True)
        if self.cfg.motion_noise_floor > 0:
            temporal = (temporal - self.cfg.motion_noise_floor / 255.0).clamp(min=0.0)
        speed = pyramid_speed(current, previous, self.sobel, self.cfg.flow_window, self.cfg.flow_levels)
        motion = torch.cat([temporal, speed], dim=1)
        return current, drop_edges(motion, edge_margin(self.cfg.flow_window))

    def describe(self, current: torch.Tensor, motion: torch.Tensor | None) -> Descriptors:
        """Per-scale memory inputs: normalized encoder features plus pooled motion statistics."""
        return self.descriptors(self.encoder(current.contiguous(memory_format=torch.channels_last)), motion)

    def descriptors(self, feats: list[torch.Tensor], motion: torch.Tensor | None) -> Descriptors:
        """Per-scale memory inputs from the encoder's maps `feats` (all its scales) and the motion field;
        `describe` without the encoder, for callers that reuse a frozen encoder's maps."""
        maps = []
        for s in self.scales:
            f = F.normalize(feats[s], dim=1)
            if motion is not None:
                pooled = _pool_motion(motion, f.shape[-2:])
                f = torch.cat([f, self.cfg.motion_weight * pooled], dim=1)
            maps.append(f)
        return Descriptors(maps=maps, last_features=feats[max(self.scales)])

    def raw_deviations(self, desc: Descriptors) -> list[torch.Tensor]:
        """D_l = ||v_l - R_l|| per position, [B, 1, h_l, w_l] for each used scale."""
        return [
            (v - memory(v)).pow(2).sum(dim=1, keepdim=True).add(1e-12).sqrt()
            for v, memory in zip(desc.maps, self.memories, strict=True)
        ]

    def standardized(self, deviations: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standardize each deviation map with the normal training set's statistics."""
        out = []
        for i, d in enumerate(deviations):
            mean, std = self.dev_stats(i)
            out.append((d - mean) / std)
        return out

    def deviations(self, current: torch.Tensor, motion: torch.Tensor | None) -> list[torch.Tensor]:
        """Standardized deviation maps of each used scale for a split input."""
        return self.standardized(self.raw_deviations(self.describe(current, motion)))

    def stack_maps(self, standardized: list[torch.Tensor]) -> torch.Tensor:
        """Upsample every scale to the stride-8 grid: [B, L, h0, w0]."""
        return torch.cat(
            [
                F.interpolate(d, size=self.map_size, mode="bilinear", align_corners=False)
                for d in standardized
            ],
            dim=1,
        )

    def score_terms(self, standardized: list[torch.Tensor], motion: torch.Tensor | None) -> torch.Tensor:
        """The one-class score's terms [B, T]: the top-k mean of every standardized D_l (k cells of the
        stride-32 grid and the same area on the finer ones), then, when the input has motion, the
        speed term (`motion_term`).

        The deviations see motion only as two of many memory channels; the speed term says directly
        that something moves faster than anything in normal footage.
        """
        terms = [topk_mean(d, k) for d, k in zip(standardized, self.topk_cells, strict=True)]
        if motion is not None:
            terms.append(self.motion_term(_pool_motion(motion, self.map_size)[:, 1:]))
        return torch.stack(terms, dim=1)

    @property
    def object_window(self) -> tuple[int, int]:
        """The speed term's window in stride-8 cells (`object_window`, clipped to the grid); before
        training has measured it, `UNMEASURED_WINDOW`."""
        h, w = self.cfg.object_window or UNMEASURED_WINDOW
        return min(h, self.map_size[0]), min(w, self.map_size[1])

    def motion_term(self, cells: torch.Tensor) -> torch.Tensor:
        """The speed term [B] from the per-cell speeds [B, 1, h0, w0]: the largest mean over one
        `object_window`, the size of one moving object, so many slow objects (a crowd's limbs) do not
        add up to a fast one.
        """
        return F.avg_pool2d(cells, self.object_window, stride=1).flatten(1).amax(dim=1)

    def oneclass_score(self, terms: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the terms, each standardized by its mean and std over normal frames."""
        return ((terms - self.term_stats[0]) / self.term_stats[1] * self.score_weights).sum(dim=1)

    def anomaly_map(self, stacked: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the upsampled standardized deviations, Gaussian-smoothed: [B, 1, h0, w0]."""
        fused = (stacked * self.scale_weights.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        return smooth(fused, self.map_kernel)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score uint8 frames [B, C, H, W]: returns (raw score [B], anomaly map [B, 1, H/8, W/8])."""
        current, motion = self.split_input(frames)
        standardized = self.deviations(current, motion)
        stacked = self.stack_maps(standardized)
        if self.cfg.score == "oneclass":
            score = self.oneclass_score(self.score_terms(standardized, motion))
        else:
            score = self.detector(stacked)
        return score, self.anomaly_map(stacked)


def _projection_head(channels: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))


def _pool_motion(motion: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Motion statistics over each cell of a feature grid: [B, 2, H, W] -> [B, 2, h, w]: the mean
    |frame difference| and the mean Lucas-Kanade speed (pixels per frame, independent of the object's
    contrast)."""
    h, w = int(size[0]), int(size[1])
    kh, kw = math.ceil(motion.shape[-2] / h), math.ceil(motion.shape[-1] / w)
    pooled = F.avg_pool2d(motion, (kh, kw), ceil_mode=True)
    if pooled.shape[-2:] != (h, w):
        pooled = F.interpolate(pooled, size=(h, w), mode="nearest")
    return pooled
