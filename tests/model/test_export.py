"""Export: the artifact's files and metadata, precision variants, and parity with PyTorch."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from model.data import load_clips
from model.export import INT8_SCOPE, ArtifactError, export_artifact, int8_nodes, load_artifact_meta
from model.pipeline import load_model, model_inputs
from model.runtime.onnxruntime_backend import OrtRuntime
from tests.conftest import PED2, PED2_CHECKPOINTS

# Tolerances: FP32 graphs differ from eager PyTorch only by kernel order (observed ~1e-5); FP16
# carries ~3 significant digits through ~60 layers; INT8 is judged by ranking, not by value.
FP32_ATOL = 1e-3
FP16_RTOL = 5e-2


@pytest.fixture(scope="module")
def exported(
    tiny_checkpoint: Path, ped2_like: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for precision, target in (("fp32", "cpu"), ("fp16", "cpu"), ("int8", "tensorrt")):
        out[precision] = root / precision
        export_artifact(
            tiny_checkpoint, out[precision], precision, calibration_data=ped2_like, int8_target=target
        )
    return out


def _torch_outputs(checkpoint: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        score, amap = model(torch.from_numpy(frames))
    return score.numpy(), amap[:, 0].numpy()


def _real_inputs(checkpoint: Path, root: Path, n: int) -> np.ndarray:
    _, meta = load_model(checkpoint)
    inputs = model_inputs(load_clips(root, meta.config.input, split="test"), meta.config)
    return inputs[np.linspace(0, len(inputs) - 1, n).round().astype(int)]


def test_artifact_holds_graph_metadata_and_checkpoint(
    exported: dict[str, Path], tiny_checkpoint: Path
) -> None:
    root = exported["fp32"]
    meta = load_artifact_meta(root)
    _, ckpt = load_model(tiny_checkpoint)
    assert {p.name for p in root.iterdir()} >= {"model.onnx", "model.json", "checkpoint.safetensors"}
    assert meta.name == "anomem" and meta.version == ckpt.version and meta.calibration == ckpt.calibration
    assert meta.input_shape == (2, 32, 48) and meta.map_shape == (4, 6)
    graph = onnx.load(str(root / "model.onnx"))
    (inp,) = graph.graph.input
    assert inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    embedded = json.loads({p.key: p.value for p in graph.metadata_props}["anomon"])
    assert embedded["version"] == ckpt.version
    assert embedded["calibration"]["threshold"] == ckpt.calibration.threshold


def test_artifact_of_an_older_format_is_refused_with_the_commands_that_rebuild_it(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    """model.json of format 1 (its config had settings since removed) is refused in one line naming
    its format and model version, and how to rebuild it: train again, then export."""
    root = tmp_path / "older"
    shutil.copytree(exported["fp32"], root)
    fields = json.loads((root / "model.json").read_text())
    fields["format"] = "anomon.artifact/1"
    fields["config"]["model"]["motion_pooling"] = "cells"
    (root / "model.json").write_text(json.dumps(fields))
    with pytest.raises(ArtifactError) as refused:
        load_artifact_meta(root)
    message = str(refused.value)
    assert "\n" not in message
    assert f"format anomon.artifact/1 (model anomem {fields['version']})" in message
    assert "anomon train --config CONFIG --data TRAINING_DATA --out CKPT" in message
    assert f"anomon export --checkpoint CKPT --out {root}" in message
    fields["format"] = "anomon.artifact/9"
    (root / "model.json").write_text(json.dumps(fields))
    with pytest.raises(ArtifactError, match=r"'anomon\.artifact/9' .* is not supported"):
        load_artifact_meta(root)


@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_graph_matches_pytorch_on_random_frames(
    exported: dict[str, Path], tiny_checkpoint: Path, batch: int
) -> None:
    frames = np.random.default_rng(batch).integers(0, 256, (batch, 2, 32, 48), dtype=np.uint8)
    score, amap = OrtRuntime(exported["fp32"], device="cpu").infer(frames)
    ref_score, ref_map = _torch_outputs(tiny_checkpoint, frames)
    np.testing.assert_allclose(score, ref_score, atol=FP32_ATOL)
    np.testing.assert_allclose(amap, ref_map, atol=FP32_ATOL)


def test_fp16_graph_is_half_precision_and_close_to_pytorch(
    exported: dict[str, Path], tiny_checkpoint: Path, ped2_like: Path
) -> None:
    graph = onnx.load(str(exported["fp16"] / "model.onnx"))
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.graph.initializer)
    frames = _real_inputs(tiny_checkpoint, ped2_like, 12)
    score, amap = OrtRuntime(exported["fp16"], device="cpu").infer(frames)
    ref_score, ref_map = _torch_outputs(tiny_checkpoint, frames)
    scale = float(np.abs(ref_score).max()) + 1.0
    np.testing.assert_allclose(score, ref_score, atol=FP16_RTOL * scale)
    np.testing.assert_allclose(amap, ref_map, atol=FP16_RTOL * (float(np.abs(ref_map).max()) + 1.0))


def test_int8_graph_has_symmetric_qdq_for_tensorrt_and_keeps_the_ranking(
    exported: dict[str, Path], tiny_checkpoint: Path, ped2_like: Path
) -> None:
    meta = load_artifact_meta(exported["int8"])
    assert meta.quantization["format"] == "QDQ" and meta.quantization["target"] == "tensorrt"
    graph = onnx.load(str(exported["int8"] / "model.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    inits = {t.name: t for t in graph.graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == TensorProto.INT8 for z in zero_points)
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric: zero point 0
    frames = _real_inputs(tiny_checkpoint, ped2_like, 24)
    score, _ = OrtRuntime(exported["int8"], device="cpu").infer(frames)
    ref_score, _ = _torch_outputs(tiny_checkpoint, frames)
    assert np.corrcoef(score, ref_score)[0, 1] > 0.9


@pytest.mark.parametrize("model", ["anomem", "daad"])
def test_int8_quantizes_the_encoder_only_and_keeps_the_ranking(
    model: str, tiny_checkpoint: Path, tiny_daad_checkpoint: Path, ped2_like: Path, tmp_path: Path
) -> None:
    """Both models' encoders are found (DAAD's stages trace as `/encoder.N/...`); no tensor computed
    outside them (motion, memories, decoder, score) is quantized."""
    checkpoint = tiny_checkpoint if model == "anomem" else tiny_daad_checkpoint
    export_artifact(checkpoint, tmp_path, "int8", calibration_data=ped2_like)
    graph = onnx.load(str(tmp_path / "model.onnx"))
    producer = {out: n.name for n in graph.graph.node for out in n.output}
    weights = {t.name for t in graph.graph.initializer}
    quantized = [n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    activations = [t for t in quantized if t not in weights]
    assert activations and all(INT8_SCOPE.match(producer[t]) for t in activations)
    frames = _real_inputs(checkpoint, ped2_like, 24)
    score, _ = OrtRuntime(tmp_path, device="cpu").infer(frames)
    ref_score, _ = _torch_outputs(checkpoint, frames)
    assert np.corrcoef(score, ref_score)[0, 1] > 0.9


def test_int8_without_an_encoder_scope_is_refused() -> None:
    """quantize_static would read an empty node list as "quantize everything": refused instead."""
    node = onnx.helper.make_node("Relu", ["x"], ["y"], name="/head/Relu")
    value = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value], [value]))
    with pytest.raises(ArtifactError, match="no encoder nodes"):
        int8_nodes(graph)


def test_int8_calibrates_on_frames_given_as_model_inputs_as_on_the_same_footage(
    tiny_checkpoint: Path, ped2_like: Path, tmp_path: Path
) -> None:
    """`anomon learn` has its footage in memory: the same frames give the same quantized graph."""
    _, meta = load_model(tiny_checkpoint)
    inputs = model_inputs(load_clips(ped2_like, meta.config.input, split="train"), meta.config)
    export_artifact(tiny_checkpoint, tmp_path / "path", "int8", calibration_data=ped2_like)
    export_artifact(tiny_checkpoint, tmp_path / "frames", "int8", calibration_inputs=inputs)
    graphs = [onnx.load(str(tmp_path / name / "model.onnx")).graph for name in ("path", "frames")]
    from_path, from_frames = ({t.name: t.SerializeToString() for t in g.initializer} for g in graphs)
    assert any("scale" in name for name in from_path) and from_frames == from_path


def test_int8_needs_calibration_data(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration-data"):
        export_artifact(tiny_checkpoint, tmp_path / "x", "int8")


def test_altered_graph_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["fp32"], copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        OrtRuntime(copy)
    with pytest.raises(ArtifactError, match=r"model\.json not found"):
        load_artifact_meta(tmp_path)


@pytest.mark.skipif(not PED2.is_dir(), reason="UCSD Ped2 not present at ../shared/data/ucsd_ped2")
@pytest.mark.parametrize("checkpoint", PED2_CHECKPOINTS, ids=lambda p: p.stem)
def test_committed_ped2_model_matches_pytorch_on_real_frames(checkpoint: Path, tmp_path: Path) -> None:
    export_artifact(checkpoint, tmp_path, "fp32")
    frames = _real_inputs(checkpoint, PED2, 16)
    score, amap = OrtRuntime(tmp_path, device="cpu", threads=2).infer(frames)
    ref_score, ref_map = _torch_outputs(checkpoint, frames)
    np.testing.assert_allclose(score, ref_score, atol=FP32_ATOL)
    np.testing.assert_allclose(amap, ref_map, atol=FP32_ATOL)
