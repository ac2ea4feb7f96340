"""Export a checkpoint to the served artifact: DIR/model.onnx + DIR/model.json (+ the checkpoint).

The graph takes uint8 frames at the model's input size (dynamic batch), normalizes them itself and
returns the raw score [B] and the low-resolution anomaly map [B, 1, h, w]. Thresholds and camera
settings stay outside it. FP16 is an FP16 graph with float32 inputs/outputs kept; INT8 is a QDQ graph
(explicit QuantizeLinear/DequantizeLinear pairs, symmetric, per-channel weights) calibrated on normal
frames: the form ONNX Runtime runs and TensorRT 11 (strongly typed) requires.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field

from model.calibration import Calibration
from model.checkpoint import RETRAIN, CheckpointError, CheckpointMeta, format_error
from model.config import ExperimentConfig

FORMAT = "anomon.artifact/2"
ONNX_FILE = "model.onnx"
META_FILE = "model.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
INPUT_NAME = "frames"
OUTPUT_NAMES = ("score", "anomaly_map")
OPSET = 17
# Only the encoder is quantized: the memory addressing (a softmax with beta = 8 over cosine
# similarities) and the deviation statistics are precision-sensitive and cheap. Traced node names
# start with the module path: `/encoder/...` (AnoMem's backbone module) or `/encoder.N/...` (DAAD's
# encoder, a list of stages).
INT8_SCOPE = re.compile(r"^/encoder[./]")

Precision = Literal["fp32", "fp16", "int8"]
Int8Target = Literal["cpu", "tensorrt"]


class ArtifactError(ValueError):
    """An exported artifact is missing, altered or inconsistent with its metadata."""


class ArtifactMeta(BaseModel):
    """model.json: everything a runtime needs to serve model.onnx, and what binds them."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    name: str
    version: str
    precision: Precision
    config: ExperimentConfig
    calibration: Calibration | None
    map_calibration: Calibration | None = None
    data_fingerprint: str
    weights_sha256: str
    onnx_file: str = ONNX_FILE
    onnx_sha256: str
    checkpoint_file: str = CHECKPOINT_FILE
    opset: int = OPSET
    input_name: str = INPUT_NAME
    output_names: tuple[str, str] = OUTPUT_NAMES
    input_shape: tuple[int, int, int]  # [C, H, W] after the dynamic batch axis; dtype uint8
    map_shape: tuple[int, int]
    quantization: dict[str, Any] = Field(default_factory=dict)
    exported_at: str
    exporter: str

    @classmethod
    def from_checkpoint(cls, meta: CheckpointMeta, **fields: Any) -> ArtifactMeta:
        """Carry the checkpoint's identity, config and calibration over to the artifact."""
        return cls(
            name=meta.name,
            version=meta.version,
            config=meta.config,
            calibration=meta.calibration,
            map_calibration=meta.map_calibration,
            data_fingerprint=meta.data_fingerprint,
            weights_sha256=meta.weights_sha256,
            **fields,
        )


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> None:
    """Trace `model` (uint8 frames -> score, map) to an FP32 ONNX graph with a dynamic batch axis."""
    example = torch.zeros((2, *input_shape), dtype=torch.uint8)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes (Python ints from shapes, unfolded Slice constants) do not apply: the
        # batch axis is declared dynamic and the spatial size is fixed by the input spec.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
        )
    onnx.checker.check_model(str(path))


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Convert an FP32 graph to FP16, keeping float32 graph outputs (inputs are uint8 anyway)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load(str(src))
    # TopK and the Gaussian map blur stay exact in float32; they are tiny.
    blocked = ["TopK"]
    converted = convert_float_to_float16(graph, keep_io_types=True, op_block_list=blocked)
    onnx.save(converted, str(dst))
    return {"method": "onnxruntime.transformers.float16", "op_block_list": blocked}


class _FrameReader:
    """CalibrationDataReader over uint8 model inputs, in small batches."""

    def __init__(self, frames: np.ndarray, batch: int = 8) -> None:
        self._batches: Iterator[np.ndarray] = iter(np.array_split(frames, max(1, len(frames) // batch)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def int8_nodes(graph: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Nodes to quantize (the encoder) and the encoder nodes kept in float.

    Kept: the first convolution (it sees raw pixels and has few channels, so per-channel INT8 costs
    the most accuracy there) and every node whose output leaves the encoder (the feature maps the
    memories compare: their rounding error lands directly in the deviation maps). Chosen by
    agreement with the FP32 scores on unlabelled frames, not by test labels.
    """
    nodes = [n for n in graph.graph.node if INT8_SCOPE.match(n.name)]
    if not nodes:
        # quantize_static reads an empty node list as "quantize every node", flow and score included.
        raise ArtifactError(f"int8: no encoder nodes (names matching {INT8_SCOPE.pattern}) in the graph")
    inside = {out for n in nodes for out in n.output}
    leaving = {t for n in graph.graph.node if not INT8_SCOPE.match(n.name) for t in n.input if t in inside}
    first_conv = next((n.name for n in nodes if n.op_type == "Conv"), None)
    kept = [n.name for n in nodes if n.name == first_conv or set(n.output) & leaving]
    return [n.name for n in nodes], kept


def to_int8(src: Path, dst: Path, calibration_inputs: np.ndarray, target: Int8Target) -> dict[str, Any]:
    """Static QDQ quantization of the encoder, calibrated on normal model inputs.

    TensorRT takes only symmetric signed INT8 activations; ONNX Runtime on x86 is fastest with
    asymmetric unsigned activations (its U8S8 kernels), so the target picks the activation type.
    Weights are symmetric signed per-channel for both.
    """
    symmetric = target == "tensorrt"
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        nodes, kept = int8_nodes(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(dst),
            _FrameReader(calibration_inputs),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_quantize=nodes,
            nodes_to_exclude=kept,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "target": target,
        "activations": ("int8 symmetric" if symmetric else "uint8 asymmetric") + ", min-max calibrated",
        "weights": "int8 symmetric per-channel",
        "scope": f"nodes matching {INT8_SCOPE.pattern}",
        "kept_float": kept,
        "calibration_frames": len(calibration_inputs),
    }


def export_artifact(
    checkpoint: str | Path,
    out_dir: str | Path,
    precision: Precision = "fp32",
    calibration_data: str | Path | None = None,
    calibration_frames: int = 256,
    int8_target: Int8Target = "cpu",
    calibration_inputs: np.ndarray | None = None,
) -> ArtifactMeta:
    """Write DIR/model.onnx, DIR/model.json and DIR/checkpoint.safetensors for one precision.

    Args:
        checkpoint: a complete checkpoint written by `anomon train`.
        out_dir: output folder (created; existing artifact files are replaced).
        precision: fp32, fp16 or int8.
        calibration_data: normal footage for INT8 calibration (int8 needs it or `calibration_inputs`).
        calibration_frames: how many evenly spaced normal frames calibrate INT8.
        int8_target: "cpu" (ONNX Runtime's fast U8S8 form) or "tensorrt" (symmetric INT8 Q/DQ).
        calibration_inputs: normal frames already as model inputs (uint8 [N, C, H, W]), instead of
            `calibration_data`.
    """
    from model.data import load_clips
    from model.pipeline import load_model, model_inputs

    model, ckpt_meta = load_model(checkpoint)
    if not ckpt_meta.complete or ckpt_meta.calibration is None:
        raise CheckpointError(f"{checkpoint} is not a finished, calibrated checkpoint; finish training first")
    if precision == "int8" and calibration_data is None and calibration_inputs is None:
        raise ValueError(
            "--precision int8 needs --calibration-data NORMAL_PATH (normal frames to calibrate on)"
        )
    spec = ckpt_meta.config.input
    input_shape = (spec.channels, spec.height, spec.width)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, input_shape, fp32)
        staged = Path(tmp) / ONNX_FILE
        quantization: dict[str, Any] = {}
        if precision == "fp32":
            shutil.copyfile(fp32, staged)
        elif precision == "fp16":
            quantization = to_fp16(fp32, staged)
        else:
            inputs = calibration_inputs
            if inputs is None:
                assert calibration_data is not None
                inputs = model_inputs(load_clips(calibration_data, spec, split="train"), ckpt_meta.config)
            picked = np.linspace(0, len(inputs) - 1, min(calibration_frames, len(inputs))).round().astype(int)
            quantization = to_int8(fp32, staged, inputs[picked], int8_target)
        graph = onnx.load(str(staged))
        with torch.no_grad():
            _, map_example = model(torch.zeros((1, *input_shape), dtype=torch.uint8))
        meta = ArtifactMeta.from_checkpoint(
            ckpt_meta,
            precision=precision,
            onnx_sha256="",
            input_shape=input_shape,
            map_shape=(int(map_example.shape[-2]), int(map_example.shape[-1])),
            quantization=quantization,
            exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            exporter=f"anomon {_version()}, torch {torch.__version__}, onnx {onnx.__version__}",
        )
        # The graph carries its own metadata too, so a bare model.onnx still says what it is.
        onnx.helper.set_model_props(graph, {"anomon": meta.model_dump_json(exclude={"onnx_sha256"})})
        onnx.save(graph, str(staged))
        shutil.move(staged, out / ONNX_FILE)
    shutil.copyfile(checkpoint, out / CHECKPOINT_FILE)
    meta = meta.model_copy(update={"onnx_sha256": sha256_file(out / ONNX_FILE)})
    (out / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
    return meta


def load_artifact_meta(artifact_dir: str | Path, verify: bool = True) -> ArtifactMeta:
    """Read DIR/model.json and (by default) check model.onnx against the hash it records.

    Raises:
        ArtifactError: missing files, another format (an older one names the commands that rebuild
            it) or a model.onnx that does not match its hash.
    """
    root = Path(artifact_dir)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{root} is not an exported artifact: {META_FILE} not found (run anomon export)")
    try:
        fields = json.loads(meta_path.read_text())
    except ValueError as err:
        raise ArtifactError(f"{meta_path}: not JSON ({err})") from None
    # Its checkpoint is as old as it is: training rebuilds that, export the artifact.
    rebuild = f"{RETRAIN.format(out='CKPT')}, then anomon export --checkpoint CKPT --out {root}"
    refused = format_error(fields, FORMAT, f"{meta_path}: artifact", rebuild)
    if refused:
        raise ArtifactError(refused)
    try:
        meta = ArtifactMeta.model_validate(fields)
    except ValueError as err:
        raise ArtifactError(f"{meta_path}: does not validate ({str(err).splitlines()[0]})") from None
    onnx_path = root / meta.onnx_file
    if verify:
        if not onnx_path.is_file():
            raise ArtifactError(f"{onnx_path} not found")
        if sha256_file(onnx_path) != meta.onnx_sha256:
            raise ArtifactError(f"{onnx_path} does not match the hash in {META_FILE} (altered or damaged)")
    return meta


def _version() -> str:
    try:
        return importlib_metadata.version("anomon")
    except importlib_metadata.PackageNotFoundError:
        return "dev"
