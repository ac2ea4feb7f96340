"""DAAD: an autoencoder with block-wise memories on its skip connections, and a discriminator.

"Divide-and-Assemble: Learning Block-wise Memory for Unsupervised Anomaly Detection" (Hou et al.,
ICCV 2021). The encoder's map at every memory stage is divided into blocks, each block is rebuilt
from a memory of normal blocks and the blocks are assembled back; the decoder sees only these
read-outs. The discriminator's pooled penultimate features give a second, semantic distance between
a frame and its reconstruction.

The module takes uint8 frames at the model's input size (with the previous frame stacked on the
channel axis when the model uses motion), normalizes them itself, and returns the raw anomaly score
and a low-resolution anomaly map: exactly what is exported and served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.anomaly_map import gaussian_kernel, smooth, topk_mean
from model.config import DAADConfig, InputSpec
from model.memory import BlockMemory
from model.motion import drop_edges, edge_margin, pyramid_speed, sobel_kernels


class ConvStage(nn.Sequential):
    """(conv3x3-BN-LeakyReLU) x 2; the first convolution has the stage's stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


class UpStage(nn.Module):
    """x2 nearest upsampling, concatenation with the stage's memory read-out if any, a ConvStage."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fuse = ConvStage(in_channels + skip_channels, out_channels, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.fuse(x if skip is None else torch.cat([x, skip], dim=1))


class Discriminator(nn.Module):
    """DCGAN-style critic of (frame, motion) images; its pooled penultimate layer is the latent."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, 1)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate feature map [B, C_last, H / 2^L, W / 2^L] of images [B, C, H, W] in [0, 1]."""
        return self.body(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features [B, C_last] of images [B, C, H, W] in [0, 1]."""
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B, C_last], real-vs-reconstructed logit [B])."""
        feats = self.features(images)
        return feats, self.head(feats).squeeze(1)


@dataclass
class Reconstruction:
    """One batch through the autoencoder."""

    target: torch.Tensor  # [B, C', Hp, Wp] in [0, 1]: frame (+ motion), padded to the model's multiple
    output: torch.Tensor  # the same shape: the reconstruction from memory read-outs
    weights: list[torch.Tensor]  # addressing weights [B, blocks, N] of every memory, shallowest first


class DAAD(nn.Module):
    """DAAD network: encoder, block memories on the skip connections, decoder, discriminator."""

    err_mean: torch.Tensor
    err_std: torch.Tensor
    lat_mean: torch.Tensor
    lat_std: torch.Tensor
    score_stats: torch.Tensor
    speed_stats: torch.Tensor
    map_kernel: torch.Tensor
    sobel: torch.Tensor

    def __init__(self, cfg: DAADConfig, spec: InputSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        # Reconstructed channels: the frame, plus one motion map (see `motion`) when the input has motion.
        self.channels = spec.frame_channels + (1 if spec.motion else 0)
        widths = cfg.widths
        depth = len(widths)
        encoded = self.channels if cfg.motion_input else spec.frame_channels
        self.encoder = nn.ModuleList(
            ConvStage(c_in, c_out, stride=2)
            for c_in, c_out in zip((encoded, *widths[:-1]), widths, strict=True)
        )
        self.blocks = {s: max(1, cfg.block_size // 2**s) for s in cfg.memory_stages}
        self.memories = nn.ModuleDict(
            {
                str(s): BlockMemory(widths[s - 1], self.blocks[s], cfg.slots, cfg.beta, cfg.shrink)
                for s in sorted(cfg.memory_stages)
            }
        )
        self.decoder = nn.ModuleList(
            UpStage(widths[s], widths[s - 1] if s in self.blocks else 0, widths[s - 1])
            for s in range(depth - 1, 0, -1)
        )
        # Full resolution gets one convolution only: it is where a layer costs the most.
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(widths[0], self.channels, 3, padding=1),
            nn.Sigmoid(),
        )
        self.discriminator = Discriminator(self.channels, cfg.discriminator_widths)
        # Pad inputs so every stage halves exactly and every memory's map divides into whole blocks.
        multiple = max([2**depth, cfg.map_stride] + [2**s * b for s, b in self.blocks.items()])
        self.padded = (-(-spec.height // multiple) * multiple, -(-spec.width // multiple) * multiple)
        self.map_size = (-(-spec.height // cfg.map_stride), -(-spec.width // cfg.map_stride))
        self.register_buffer("err_mean", torch.zeros(1, 1, *self.map_size))
        self.register_buffer("err_std", torch.ones(1, 1, *self.map_size))
        # Normal mean and std of each cell of the discriminator's penultimate map (with `latent_topk`).
        latent_size = self.padded
        for _ in cfg.discriminator_widths:
            latent_size = ((latent_size[0] - 2) // 2 + 1, (latent_size[1] - 2) // 2 + 1)
        self.register_buffer("lat_mean", torch.zeros(1, 1, *latent_size))
        self.register_buffer("lat_std", torch.ones(1, 1, *latent_size))
        # Normal mean and std of the pooled reconstruction score and of the latent distance.
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        # Normal mean and std of the speed term (when the score has one).
        self.has_speed_term = spec.motion and cfg.speed_weight > 0
        self.register_buffer("speed_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("map_kernel", gaussian_kernel(cfg.map_sigma))
        self.register_buffer("sobel", sobel_kernels(), persistent=False)
        # Narrow convolutions at high resolution train about 1.4x faster channels-last on CPU.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def edges(self, motion: torch.Tensor) -> torch.Tensor:
        """Motion with the frame's edges dropped (`model.motion.edge_margin` of `flow_window`)."""
        return drop_edges(motion, edge_margin(self.cfg.flow_window))

    def motion(
        self, current: torch.Tensor, previous: torch.Tensor, speed_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Motion channel [B, 1, H, W] in [0, 1] of frames in [0, 1], edges handled by `edges`.

        `diff`: |frame - previous|. `flow`: the normal-flow speed, sum|dI/dt||grad I| / sum|grad I|^2
        over 3x3 windows (least squares along the gradient; pixels per frame, independent of the
        object's contrast), divided by `speed_scale` and clipped at 1. `lk`: the Lucas-Kanade
        optical-flow speed over `flow_window` pixels (`speed_map` when the caller has it already),
        scaled and clipped the same way.
        """
        if self.cfg.motion_features == "lk" and speed_map is not None:
            return (speed_map / self.cfg.speed_scale).clamp(max=1.0)  # edges handled in speed_map
        return self.edges(self._motion(current, previous))

    def _motion(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        if self.cfg.motion_features == "diff":
            return (current - previous).abs().mean(dim=1, keepdim=True)
        if self.cfg.motion_features == "lk":
            speed = pyramid_speed(current, previous, self.sobel, self.cfg.flow_window, self.cfg.flow_levels)
            return (speed / self.cfg.speed_scale).clamp(max=1.0)
        # A 3x3 blur keeps pixel noise out of the temporal and spatial derivatives.
        current = F.avg_pool2d(current, 3, stride=1, padding=1, count_include_pad=False)
        previous = F.avg_pool2d(previous, 3, stride=1, padding=1, count_include_pad=False)
        temporal = (current - previous).abs().mean(dim=1, keepdim=True)
        mid = ((current + previous) / 2).mean(dim=1, keepdim=True)
        gradient = (
            F.conv2d(F.pad(mid, (1, 1, 1, 1), mode="replicate"), self.sobel).pow(2).sum(1, keepdim=True)
        )
        num = F.avg_pool2d(temporal * gradient.sqrt(), 3, stride=1, padding=1, count_include_pad=False)
        den = F.avg_pool2d(gradient, 3, stride=1, padding=1, count_include_pad=False)
        return (num / (den + 1e-4) / self.cfg.speed_scale).clamp(max=1.0)

    def speed_map(self, frames: torch.Tensor) -> torch.Tensor:
        """Lucas-Kanade speed [B, 1, H, W] (input pixels per frame, not clipped; edges handled by
        `edges`) of uint8 frames with their previous frame."""
        x = frames.float() / 255.0
        c = self.spec.frame_channels
        speed = pyramid_speed(x[:, :c], x[:, c:], self.sobel, self.cfg.flow_window, self.cfg.flow_levels)
        return self.edges(speed)

    def speed_cells(self, speed_map: torch.Tensor) -> torch.Tensor:
        """Mean speed of every map cell of a `speed_map`: [B, 1, h, w]."""
        return F.avg_pool2d(speed_map, self.cfg.map_stride, ceil_mode=True)

    def speed(self, speed_map: torch.Tensor) -> torch.Tensor:
        """The speed term's raw value [B] of a `speed_map`: the mean speed of the `speed_topk` fastest
        map cells.

        The motion channel is rebuilt through the memories, and the decoder reproduces much of fast
        motion (see benchmarks/README.md), so its error understates speed; this term says directly
        that something moves faster than anything in normal footage, as AnoMem's speed term does.
        """
        return topk_mean(self.speed_cells(speed_map), self.cfg.speed_topk)

    def target(self, frames: torch.Tensor, speed_map: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [B, C, H, W] -> what the autoencoder rebuilds, [B, C', Hp, Wp] in [0, 1], padded.

        `speed_map`: the frames' `speed_map`, when the caller has it (the `lk` motion channel is
        made from it instead of computing the flow again)."""
        x = frames.float() / 255.0
        c = self.spec.frame_channels
        current = x[:, :c]
        if self.spec.motion:
            current = torch.cat([current, self.motion(current, x[:, c:], speed_map)], dim=1)
        pad_h, pad_w = self.padded[0] - self.spec.height, self.padded[1] - self.spec.width
        if pad_h or pad_w:
            current = F.pad(current, (0, pad_w, 0, pad_h), mode="replicate")
        return current

    def encode(self, target: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's map after every stage, shallowest first.

        With `motion_input` false the encoder sees the frame channels only: the decoder then has to
        predict the motion map from appearance (what a normal object of that look does), so motion
        unlike anything in normal footage is rebuilt wrongly instead of copied.
        """
        features = []
        if not self.cfg.motion_input:
            target = target[:, : self.spec.frame_channels]
        x = target.contiguous(memory_format=torch.channels_last)
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        return features

    def reconstruct(self, target: torch.Tensor) -> Reconstruction:
        """Encode, rebuild each memory stage's map from memory, decode from the read-outs only."""
        features = self.encode(target)
        readouts: dict[int, torch.Tensor] = {}
        weights = []
        for key, memory in self.memories.items():
            readouts[int(key)], w = memory(features[int(key) - 1])
            weights.append(w)
        depth = len(self.encoder)
        y = readouts[depth]
        for s, up in zip(range(depth - 1, 0, -1), self.decoder, strict=True):
            y = up(y, readouts.get(s))
        return Reconstruction(target=target, output=self.head(y), weights=weights)

    def pixel_error(self, rec: Reconstruction, scoring: bool = False) -> torch.Tensor:
        """Squared error per pixel [B, 1, Hp, Wp]: mean over the frame's channels + weighted motion.

        When scoring with `motion_error: faster`, the motion channel counts only where the observed
        motion exceeds the rebuilt one (training always fits both directions).
        """
        diff = rec.target - rec.output
        c = self.spec.frame_channels
        error = diff[:, :c].pow(2).mean(dim=1, keepdim=True)
        if self.spec.motion:
            motion = diff[:, c:]
            if scoring and self.cfg.motion_error == "faster":
                motion = motion.clamp(min=0.0)
            error = error + self.cfg.motion_weight * motion.pow(2)
        return error

    def error_cells(self, rec: Reconstruction) -> torch.Tensor:
        """Mean scoring pixel error over each map cell (map_stride pixels square): [B, 1, h, w]."""
        cells = F.avg_pool2d(self.pixel_error(rec, scoring=True), self.cfg.map_stride)
        return cells[:, :, : self.map_size[0], : self.map_size[1]]

    def latent_cells(self, rec: Reconstruction) -> torch.Tensor:
        """Squared distance [B, 1, h, w] between the discriminator's penultimate maps of a frame and of
        its reconstruction, at every cell (raw, before `lat_mean` / `lat_std`)."""
        real = self.discriminator.feature_map(rec.target)
        fake = self.discriminator.feature_map(rec.output)
        return (real - fake).pow(2).sum(dim=1, keepdim=True)

    def latent_distance(self, rec: Reconstruction) -> torch.Tensor:
        """Discriminator-latent distance [B] between a frame and its reconstruction.

        With `latent_topk`, the distance is taken at every cell of the penultimate map, standardized
        by that cell's normal mean and std (the walkway, the grass and the far end of the scene
        differ in how well they are rebuilt, as the error cells do) and the k largest are averaged:
        an anomaly covers a few cells, so pooling the features first dilutes it. Without, the
        squared distance of the spatially pooled features.
        """
        if self.cfg.latent_topk is None:
            real = self.discriminator.features(rec.target)
            fake = self.discriminator.features(rec.output)
            return (real - fake).pow(2).sum(dim=1)
        return self.latent_topk_of(self.latent_cells(rec))

    def latent_topk_of(self, cells: torch.Tensor) -> torch.Tensor:
        """Mean of the `latent_topk` largest standardized latent cells: [B, 1, h, w] -> [B]."""
        assert self.cfg.latent_topk is not None
        return topk_mean((cells - self.lat_mean) / self.lat_std, self.cfg.latent_topk)

    def standardized(self, cells: torch.Tensor) -> torch.Tensor:
        """Standardize error cells with the normal per-position mean and std."""
        return (cells - self.err_mean) / self.err_std

    def terms(self, frames: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, Reconstruction]:
        """Score uint8 frames [B, C, H, W] term by term.

        Returns the score's terms [B], each standardized by its normal mean and std as the score
        weighs it (`reconstruction`; `latent` when `latent_weight` > 0; `speed` with a speed term),
        the anomaly cells [B, 1, h, w] before smoothing, and the reconstruction.
        """
        speed_map = self.speed_map(frames) if self.has_speed_term else None
        rec = self.reconstruct(self.target(frames, speed_map))
        z = self.standardized(self.error_cells(rec))
        stats = self.score_stats
        terms = {"reconstruction": (topk_mean(z, self.cfg.topk) - stats[0]) / stats[1]}
        if self.cfg.latent_weight > 0:
            terms["latent"] = (self.latent_distance(rec) - stats[2]) / stats[3]
        if speed_map is not None:
            cells = (self.speed_cells(speed_map) - self.speed_stats[0]) / self.speed_stats[1]
            terms["speed"] = topk_mean(cells, self.cfg.speed_topk)
            # The map shows what the score weighs: cells faster than the normal frames' fastest add
            # their excess, so an alert raised for speed boxes what moves too fast.
            z = z + self.cfg.speed_weight * cells.clamp(min=0.0)
        return terms, z, rec

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score uint8 frames [B, C, H, W]: (raw score [B], anomaly map [B, 1, H/s, W/s])."""
        terms, cells, _ = self.terms(frames)
        score = terms["reconstruction"]
        if "latent" in terms:
            score = score + self.cfg.latent_weight * terms["latent"]
        if "speed" in terms:
            score = score + self.cfg.speed_weight * terms["speed"]
        return score, smooth(cells, self.map_kernel)
