"""Model and training configuration: plain data, loaded from YAML and stored in checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration value a user supplied is invalid; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _odd_window(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd so the window is centred on its pixel, e.g. {value + 1}")
    return value


OddWindow = Annotated[
    int,
    Field(
        ge=3,
        le=63,
        description="least-squares window of the Lucas-Kanade speed in input pixels (odd); motion within "
        "flow_window // 2 + 3 pixels of the frame's edges is set to 0 (content entering the frame has no "
        "match in the previous frame, so flow there reads an entering walker as fast)",
    ),
    AfterValidator(_odd_window),
]


FlowLevels = Annotated[
    int,
    Field(
        ge=1,
        le=3,
        description="resolutions of the Lucas-Kanade speed (model.motion.pyramid_speed): 1 reads up to "
        "about 3 px per frame at the input size and less beyond, 2 up to about 6, 3 up to about 10, "
        "high by up to a half near the top (benchmarks/lk_range.py): more than 1 for scenes with "
        "objects faster than walkers (vehicles)",
    ),
]


class InputSpec(_Strict):
    """What the exported graph takes: uint8 frames already resized to `height` x `width`.

    With `motion`, each sample carries the previous frame too (channels = 2 * frame channels);
    the model turns the pair into an absolute-difference motion map itself.
    """

    height: int = Field(160, ge=32, le=2048)
    width: int = Field(240, ge=32, le=2048)
    color: bool = False
    motion: bool = True
    fps: float = Field(
        10.0,
        gt=0,
        le=240,
        description="frame rate of the footage the model learns: its motion cues read speed per interval "
        "of this rate. anomon learn keeps a stream's frames at it; anomon train takes footage as recorded, "
        "so record at it (UCSD Ped2: 10)",
    )

    @property
    def frame_channels(self) -> int:
        return 3 if self.color else 1

    @property
    def channels(self) -> int:
        return self.frame_channels * (2 if self.motion else 1)


class MemoryConfig(_Strict):
    """Hopfield memory of one scale."""

    slots: int = Field(ge=2)
    dim: int = Field(128, ge=4)
    beta: float = Field(8.0, gt=0)


class AnoMemConfig(_Strict):
    """The AnoMem network: encoder, per-scale memories, deviation maps and the stage-2 score."""

    name: Literal["anomem"] = "anomem"
    encoder: Literal["efficientnet_lite0", "resnet18"] = "efficientnet_lite0"
    pretrained: bool = True
    freeze_encoder: bool = False
    scales: tuple[int, ...] = (0, 1, 2)
    memories: tuple[MemoryConfig, ...] = (
        MemoryConfig(slots=256),
        MemoryConfig(slots=512),
        MemoryConfig(slots=1024),
    )
    flow_window: OddWindow = 15
    flow_levels: FlowLevels = 1
    motion_noise_floor: float = Field(
        0.0,
        ge=0,
        le=64,
        description="grey levels subtracted from |frame - previous| (floored at 0) before the "
        "memories see it, so sensor and compression noise on a still scene reads as no motion; 0: off",
    )
    motion_weight: float = Field(2.0, ge=0)
    proj_dim: int = Field(128, ge=8)
    topk: int = Field(
        8,
        ge=1,
        description="each scale's term is the mean of its largest deviations: k cells of the stride-32 "
        "grid and the same image area on the finer grids (4x the cells per halving of the stride)",
    )
    scale_weights: tuple[float, ...] | None = Field(
        None, description="weights of the scales in the anomaly map; None: equal"
    )
    score_weights: tuple[float, ...] | None = Field(
        None,
        description="weights of the one-class score's terms, each standardized over the normal training "
        "frames: one per scale, then the motion term when the input has motion; None: equal",
    )
    object_window: tuple[int, int] | None = Field(
        None,
        description="the speed term is the largest mean Lucas-Kanade speed over a window of this many "
        "stride-8 cells (high, wide), one moving object's size; None: measured by anomon train on the "
        "training frames (the median bounding box of connected moving regions) and stored in the checkpoint",
    )
    map_sigma: float = Field(1.0, ge=0)
    score: Literal["oneclass", "svdd", "classifier"] = "oneclass"
    per_position_stats: bool = True
    std_shrinkage: float = Field(0.5, ge=0, le=1)

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, scales: tuple[int, ...]) -> tuple[int, ...]:
        if not scales or any(s not in (0, 1, 2) for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(
                "must be distinct values among 0, 1, 2 (encoder strides 8, 16, 32), e.g. [0, 1, 2]"
            )
        return scales

    @field_validator("object_window")
    @classmethod
    def _check_window(cls, window: tuple[int, int] | None) -> tuple[int, int] | None:
        if window is not None and min(window) < 1:
            raise ValueError("must be two cell counts >= 1 (high, wide), e.g. [4, 3], or null to measure it")
        return window

    @model_validator(mode="after")
    def _check_lengths(self) -> AnoMemConfig:
        if len(self.memories) != 3:
            raise ValueError("memories: must list 3 entries, one per encoder scale (unused ones are ignored)")
        if self.scale_weights is not None and len(self.scale_weights) != len(self.scales):
            raise ValueError("scale_weights: must have one weight per entry of scales")
        return self


class DAADConfig(_Strict):
    """The DAAD network: an autoencoder whose decoder sees only block-wise memory read-outs.

    The encoder has one stride-2 stage per entry of `widths`; the skip connections of the stages in
    `memory_stages` (1 = stride 2, ..., len(widths) = the bottleneck) pass through a block memory.
    Every memory divides its map into blocks covering `block_size` x `block_size` input pixels (one
    feature cell where a cell is larger), the granularity knob of the paper.
    """

    name: Literal["daad"] = "daad"
    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    memory_stages: tuple[int, ...] = (2, 3, 4, 5)
    block_size: int = Field(32, ge=1, description="block footprint in input pixels, a power of two")
    slots: int = Field(256, ge=2, description="memory items per memory stage")
    beta: float = Field(10.0, gt=0, description="inverse temperature of the cosine addressing")
    shrink: float = Field(2.0, ge=0, description="hard-shrinkage threshold in units of 1/slots")
    motion_features: Literal["diff", "flow", "lk"] = Field(
        "flow",
        description="motion channel: diff (frame difference), flow (normal-flow speed), lk (Lucas-Kanade "
        "optical-flow speed over flow_window pixels)",
    )
    flow_window: OddWindow = 15
    flow_levels: FlowLevels = 1
    speed_scale: float = Field(
        4.0, gt=0, description="flow, lk: speed (input pixels per frame) read as motion 1.0"
    )
    motion_weight: float = Field(8.0, ge=0, description="weight of the motion channel's squared error")
    motion_input: bool = Field(
        True,
        description="the encoder sees the motion channel; false: it sees the frame only and the decoder "
        "must infer the motion from appearance through the memories",
    )
    motion_error: Literal["squared", "faster"] = Field(
        "squared",
        description="motion channel's error in the score: squared, or faster (only where the observed "
        "motion exceeds the rebuilt one; training always fits both directions)",
    )
    discriminator_widths: tuple[int, ...] = (16, 32, 64, 128)
    latent_weight: float = Field(
        1.0, ge=0, description="weight of the discriminator-latent distance in the score (0: off)"
    )
    latent_topk: int | None = Field(
        4,
        ge=1,
        description="latent distance: mean of the k largest per-cell distances of the discriminator's "
        "penultimate maps, each standardized with its cell's normal mean and std like the error cells "
        "(None: distance of the spatially pooled features)",
    )
    speed_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the speed term in the score (with motion input): the mean Lucas-Kanade "
        "speed over flow_window pixels of the speed_topk fastest map cells, standardized over normal "
        "frames like the other terms, as AnoMem's score has it; 0: off",
    )
    speed_topk: int = Field(16, ge=1, description="the speed term pools the k fastest map cells")
    map_stride: int = Field(8, ge=1, description="anomaly map cell size in input pixels")
    topk: int = Field(16, ge=1, description="the reconstruction score is the mean of the k worst cells")
    map_sigma: float = Field(1.0, ge=0)
    per_position_stats: bool = Field(
        False, description="standardize error cells per position (else with one mean and std)"
    )
    std_shrinkage: float = Field(0.5, ge=0, le=1)

    @field_validator("widths", "discriminator_widths")
    @classmethod
    def _check_widths(cls, widths: tuple[int, ...]) -> tuple[int, ...]:
        if not 2 <= len(widths) <= 6 or any(w < 4 for w in widths):
            raise ValueError("must list 2 to 6 channel counts of at least 4, e.g. [16, 32, 64, 128]")
        return widths

    @field_validator("block_size", "map_stride")
    @classmethod
    def _check_power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two, e.g. 32")
        return value

    @field_validator("memory_stages")
    @classmethod
    def _check_stages(cls, stages: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        deepest = len(info.data.get("widths", ()))
        if len(set(stages)) != len(stages) or any(not 1 <= s <= deepest for s in stages):
            raise ValueError(f"must be distinct stages among 1..{deepest} (one per entry of widths)")
        if deepest not in stages:
            raise ValueError(f"must include the bottleneck stage {deepest}: the decoder sees only memory")
        return stages


def _model_name(value: Any) -> str:
    """The model config's tag; a model section without `name` is the default model, AnoMem."""
    if isinstance(value, dict):
        return str(value.get("name", "anomem"))
    return str(getattr(value, "name", "anomem"))


ModelConfig = Annotated[
    Annotated[AnoMemConfig, Tag("anomem")] | Annotated[DAADConfig, Tag("daad")],
    Discriminator(
        _model_name,
        custom_error_type="model_name",
        custom_error_message="Input should be 'anomem' or 'daad'",
    ),
]
MODEL_NAMES = ("anomem", "daad")


class DAADTrainConfig(_Strict):
    """DAAD's adversarial training: loss weights and the discriminator's optimizer."""

    w_entropy: float = Field(0.0002, ge=0, description="memory addressing entropy (MemAE)")
    w_adversarial: float = Field(0.001, ge=0, description="non-saturating GAN loss of the autoencoder")
    w_feature_matching: float = Field(
        0.01, ge=0, description="discriminator penultimate-feature matching, per sample"
    )
    discriminator_lr: float = Field(2e-4, gt=0)


class TrainConfig(_Strict):
    """Stage 1 (representation + memory) and stage 2 (statistics, detector) training settings."""

    seed: int = 0
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=2)
    frames_per_epoch: int | None = Field(
        1200,
        ge=2,
        description="samples per epoch, passing over short footage several times so that a few minutes "
        "of a camera train for as many steps as an hour; None: one pass over the footage",
    )
    lr: float = Field(2e-3, gt=0)
    # Fine-tuning a pretrained encoder wants a far smaller step than the freshly initialised memories.
    encoder_lr: float | None = Field(
        1e-4, gt=0, description="encoder learning rate when it trains (None: lr)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    memory_init: Literal["sample", "spread"] = Field(
        "sample",
        description="AnoMem's memory slots start as queries of normal feature positions: sample (drawn "
        "uniformly) or spread (k-means++ seeding: rare content such as walkers gets slots too)",
    )
    temperature: float = Field(0.3, gt=0)
    w_contrastive: float = Field(1.0, ge=0)
    w_memory_contrastive: float = Field(1.0, ge=0)
    w_fit: float = Field(10.0, ge=0)
    w_variance: float = Field(1.0, ge=0)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    detector_epochs: int = Field(10, ge=1)
    detector_lr: float = Field(1e-3, gt=0)
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    false_alarm_rate: float = Field(0.01, gt=0, lt=1)
    smoothing_frames: int = Field(8, ge=1)
    num_threads: int | None = None
    daad: DAADTrainConfig = DAADTrainConfig()


class ExperimentConfig(_Strict):
    """Everything `anomon train` needs besides the data path."""

    input: InputSpec = InputSpec()
    model: ModelConfig = AnoMemConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check_score_weights(self) -> ExperimentConfig:
        model = self.model
        if isinstance(model, AnoMemConfig) and model.score_weights is not None:
            expected = score_terms(model, self.input)
            if len(model.score_weights) != expected:
                motion = ", then one for the motion term" if self.input.motion else ""
                raise ValueError(
                    f"model.score_weights: must list {expected} weights, one per entry of scales{motion}"
                )
        return self


def same_training(requested: ExperimentConfig, trained: ExperimentConfig) -> bool:
    """Whether a checkpoint trained with `trained` is what `requested` asks for: equal, up to the
    settings training measures itself where `requested` leaves them unset (model.object_window)."""
    if (
        isinstance(requested.model, AnoMemConfig)
        and isinstance(trained.model, AnoMemConfig)
        and requested.model.object_window is None
    ):
        trained = trained.model_copy(
            update={"model": trained.model.model_copy(update={"object_window": None})}
        )
    return requested == trained


def score_terms(model: AnoMemConfig, spec: InputSpec) -> int:
    """How many terms AnoMem's one-class score adds up: one per scale, plus motion if the input has it."""
    return len(model.scales) + (1 if spec.motion else 0)


def _error_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    # The model section is a tagged union: pydantic puts the tag in the path (model.daad.slots).
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in MODEL_NAMES:
        del loc[1]
    if first["type"] == "model_name":
        loc = ["model", "name"]
    if len(loc) <= 1 and first["type"] == "value_error":
        # Checks across fields start their message with the field: "model.score_weights: ..." for
        # ExperimentConfig's, "memories: ..." inside a section.
        field, sep, message = str(first["ctx"]["error"]).partition(": ")
        if sep and field.replace(".", "").replace("_", "").isalnum():
            return f"{source}: field '{'.'.join([*map(str, loc), field])}': {message}"
    field = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}: field '{field}': {first['msg']}"


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raises ConfigError naming the first bad field."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_error_line(err, source)) from None


def read_yaml_mapping(path: str | Path, sections: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); every config file goes through here.

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping of `sections`.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with {sections}")
    return loaded or {}


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data["a"]["b"] = value` for `dotted` "a.b", creating sections on the way."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"field '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the defaults) and apply dotted-key overrides like {"train.epochs": 2}."""
    data = read_yaml_mapping(path, "input/model/train sections") if path is not None else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, str(path) if path is not None else "defaults")
