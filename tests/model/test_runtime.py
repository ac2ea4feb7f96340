"""The runtime interface: backend choice, parity between backends, input checks, TensorRT pieces."""

import dataclasses
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from model.export import export_artifact
from model.runtime import (
    Availability,
    BackendUnavailableError,
    choose_backend,
    onnxruntime_backend,
    open_runtime,
)
from model.runtime.bench import LatencyStats, measure, measure_concurrent
from model.runtime.engine_cache import (
    EngineCacheError,
    EngineKey,
    ShapeProfile,
    cached_or_built,
    read_engine,
    write_engine,
)
from model.runtime.tensorrt_backend import builder_flags, tensorrt_major, torch_dtype_name

NONE = Availability(cuda=False, tensorrt=False, onnxruntime=False, onnxruntime_cuda=False)


@pytest.mark.parametrize(
    ("have", "expected"),
    [
        (Availability(cuda=True, tensorrt=True, onnxruntime=True, onnxruntime_cuda=True), "tensorrt"),
        (Availability(cuda=False, tensorrt=True, onnxruntime=True, onnxruntime_cuda=False), "onnxruntime"),
        (Availability(cuda=True, tensorrt=False, onnxruntime=True, onnxruntime_cuda=True), "onnxruntime"),
        (NONE, "torch"),
    ],
)
def test_auto_prefers_tensorrt_then_onnxruntime_then_torch(have: Availability, expected: str) -> None:
    name, reason = choose_backend("auto", have)
    assert name == expected and reason


def test_named_backend_is_taken_and_unknown_is_refused() -> None:
    assert choose_backend("torch", NONE) == ("torch", "requested")
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        choose_backend("tflite", NONE)


@pytest.fixture(scope="module")
def artifact(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    export_artifact(tiny_checkpoint, out, "fp32")
    return out


def test_torch_and_onnxruntime_agree_through_the_interface(artifact: Path, tiny_checkpoint: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 32, 48), dtype=np.uint8)
    ort_rt = open_runtime(artifact, "onnxruntime", device="cpu")
    torch_rt = open_runtime(tiny_checkpoint, "torch", device="cpu")
    torch_from_dir = open_runtime(artifact, "torch", device="cpu")
    assert (ort_rt.backend, torch_rt.backend) == ("onnxruntime", "torch")
    assert ort_rt.model.version == torch_rt.model.version and ort_rt.model.map_shape == (4, 6)
    (s1, m1), (s2, m2), (s3, _) = (rt.infer(frames) for rt in (ort_rt, torch_rt, torch_from_dir))
    assert s1.shape == (3,) and m1.shape == (3, 4, 6) and s1.dtype == m1.dtype == np.float32
    np.testing.assert_allclose(s1, s2, atol=1e-3)
    np.testing.assert_allclose(m1, m2, atol=1e-3)
    np.testing.assert_array_equal(s2, s3)


def test_cpu_sessions_share_one_arena_and_concurrent_calls_stay_exact(
    artifact: Path, tiny_daad_checkpoint: Path, tmp_path: Path
) -> None:
    """Two models (AnoMem and DAAD) on one shared arena, called at once from two threads, give what each
    gives alone: the shared allocator never hands one session's buffers to the other."""
    daad = export_artifact(tiny_daad_checkpoint, tmp_path / "daad", "fp32")
    assert daad.name == "daad"
    runtimes = [
        open_runtime(path, "onnxruntime", device="cpu", threads=1) for path in (artifact, tmp_path / "daad")
    ]
    assert onnxruntime_backend._shared_arena  # registered once, by the first CPU session
    rng = np.random.default_rng(1)
    batches = [
        [rng.integers(0, 256, (4, *rt.model.input_shape), dtype=np.uint8) for _ in range(6)]
        for rt in runtimes
    ]
    alone = [[rt.infer(b) for b in own] for rt, own in zip(runtimes, batches, strict=True)]

    def run(index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [runtimes[index].infer(b) for b in batches[index] for _ in range(3)][::3]

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, range(2)))
    for expected, got in zip(alone, together, strict=True):
        for (s1, m1), (s2, m2) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(s1, s2)
            np.testing.assert_array_equal(m1, m2)


def test_auto_on_this_cpu_machine_opens_onnxruntime_from_a_checkpoint(tiny_checkpoint: Path) -> None:
    runtime = open_runtime(tiny_checkpoint, "auto", device="cpu")
    assert runtime.backend == ("tensorrt" if Availability.probe().tensorrt else "onnxruntime")
    assert "anomem" in runtime.describe()


def test_a_checkpoint_opened_on_onnxruntime_leaves_no_export_behind(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service and `anomon eval` export a checkpoint file for ONNX Runtime on every start; each
    # export is a model's size, so a kept folder per start fills /tmp over restarts.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    frames = np.random.default_rng(0).integers(0, 256, (2, 2, 32, 48), dtype=np.uint8)
    runtime = open_runtime(tiny_checkpoint, "onnxruntime", device="cpu")
    assert list(tmp_path.iterdir()) == []
    score, amap = runtime.infer(frames)  # the session holds the graph: it still runs
    assert score.shape == (2,) and np.isfinite(score).all() and amap.shape == (2, 4, 6)


def test_wrong_input_is_refused_with_the_expected_shape(artifact: Path) -> None:
    runtime = open_runtime(artifact, "onnxruntime", device="cpu")
    with pytest.raises(ValueError, match=r"expects uint8 frames \[B, 2, 32, 48\]"):
        runtime.infer(np.zeros((1, 2, 32, 48), np.float32))
    with pytest.raises(ValueError, match="expects uint8"):
        runtime.infer(np.zeros((1, 1, 32, 48), np.uint8))


def test_unavailable_backends_say_what_is_missing(artifact: Path) -> None:
    have = Availability.probe()
    if not have.cuda:
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            open_runtime(artifact, "torch", device="cuda")
    if not have.tensorrt:
        with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
            open_runtime(artifact, "tensorrt")
    with pytest.raises(FileNotFoundError):
        open_runtime(artifact / "nope", "onnxruntime")


# TensorRT's surroundings, testable without TensorRT.

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="90",
    tensorrt_version="10.13.0",
    precision="fp16",
    profile=ShapeProfile("frames", (2, 160, 240), 1, 8, 32),
)


def test_engine_cache_round_trip_and_file_name_binds_gpu_and_version(tmp_path: Path) -> None:
    path = tmp_path / KEY.file_name()
    write_engine(path, KEY, b"plan-bytes")
    assert read_engine(path, KEY) == b"plan-bytes"
    assert "nvidia-h100" in KEY.file_name() and "trt10.13.0" in KEY.file_name() and "sm90" in KEY.file_name()


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"gpu_name": "NVIDIA A100"},
        {"tensorrt_version": "11.0.0"},
        {"precision": "int8"},
        {"profile": ShapeProfile("frames", (2, 160, 240), 1, 8, 64)},
        {"version_compatible": True},
    ],
)
def test_engine_built_for_anything_else_is_refused(tmp_path: Path, change: dict) -> None:
    path = tmp_path / "e.engine"
    write_engine(path, KEY, b"plan")
    other = EngineKey(**{**KEY.__dict__, **change})
    assert other.digest() != KEY.digest()
    with pytest.raises(EngineCacheError, match="built for another"):
        read_engine(path, other)


def test_altered_or_foreign_engine_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.engine"
    write_engine(path, KEY, b"plan")
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(EngineCacheError, match="do not match their recorded hash"):
        read_engine(path, KEY)
    path.write_bytes(b"\x00" * 64)  # e.g. a bare plan someone dropped into the cache
    with pytest.raises(EngineCacheError, match="not an anomon engine"):
        read_engine(path, KEY)


def test_the_engine_cache_builds_once_rebuilds_what_fails_its_checks_and_survives_a_read_only_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builds: list[bytes] = []

    def build(plan: bytes) -> bytes:
        builds.append(plan)
        return plan

    cache = tmp_path / "engines"  # e.g. model.engine_cache: one folder for the engines of many artifacts
    assert cached_or_built(cache, KEY, lambda: build(b"plan-1")) == b"plan-1"
    assert cached_or_built(cache, KEY, lambda: build(b"plan-2")) == b"plan-1" and builds == [b"plan-1"]
    other = dataclasses.replace(KEY, onnx_sha256="cd" * 32)  # another artifact's graph, same folder
    assert cached_or_built(cache, other, lambda: build(b"plan-3")) == b"plan-3"
    assert len(list(cache.glob("*.engine"))) == 2

    (cache / KEY.file_name()).write_bytes(b"tampered")
    assert cached_or_built(cache, KEY, lambda: build(b"plan-4")) == b"plan-4"
    assert read_engine(cache / KEY.file_name(), KEY) == b"plan-4"

    # A folder that cannot be written (a file stands where it should be, as a read-only mount refuses
    # writes even to root): the engine still serves, built again at the next start, and the log says so.
    blocked = tmp_path / "read-only-models"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        assert cached_or_built(blocked / "engines", KEY, lambda: build(b"plan-5")) == b"plan-5"
    assert "it is built again at every start: set model.engine_cache" in caplog.text


def test_shape_profile_orders_and_admits_batches() -> None:
    profile = ShapeProfile("frames", (2, 160, 240), 1, 8, 32)
    assert profile.shapes() == ((1, 2, 160, 240), (8, 2, 160, 240), (32, 2, 160, 240))
    assert profile.admits(1) and profile.admits(32) and not profile.admits(33)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile("frames", (2, 160, 240), 8, 4, 32)


def test_precision_flags_per_tensorrt_major_and_dtype_mapping() -> None:
    assert tensorrt_major("10.13.2.6") == 10 and tensorrt_major("11.4.0") == 11
    assert builder_flags(10, "fp16") == ["FP16"] and "INT8" in builder_flags(10, "int8")
    assert builder_flags(11, "fp16") == [] and builder_flags(11, "int8") == []  # strongly typed
    assert builder_flags(10, "fp32") == []
    assert torch_dtype_name("HALF") == "float16" and torch_dtype_name("FLOAT") == "float32"
    with pytest.raises(ValueError, match="no torch buffer mapping"):
        torch_dtype_name("FP8")


@pytest.mark.skipif(
    not (Availability.probe().tensorrt and Availability.probe().cuda),
    reason="TensorRT builder and a CUDA GPU are not available on this machine (DESIGN.md)",
)
def test_tensorrt_engine_matches_onnxruntime_and_is_cached(artifact: Path, tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (4, 2, 32, 48), dtype=np.uint8)
    trt_rt = open_runtime(artifact, "tensorrt")
    s1, m1 = trt_rt.infer(frames)
    s2, m2 = open_runtime(artifact, "onnxruntime").infer(frames)
    np.testing.assert_allclose(s1, s2, atol=1e-2)
    np.testing.assert_allclose(m1, m2, atol=1e-2)
    assert list((artifact / "engines").glob("*.engine"))
    # model.engine_cache: the engine goes to the folder named, and the artifact is not written.
    before = sorted(p.name for p in artifact.rglob("*"))
    s3, _ = open_runtime(artifact, "tensorrt", engine_cache=tmp_path / "cache").infer(frames)
    np.testing.assert_allclose(s3, s1, atol=1e-3)
    assert (
        list((tmp_path / "cache").glob("*.engine")) and sorted(p.name for p in artifact.rglob("*")) == before
    )


def test_latency_stats_and_concurrent_calls_count_every_frame(artifact: Path) -> None:
    stats = LatencyStats.from_seconds(4, [0.01, 0.01, 0.04])
    assert stats.fps == pytest.approx(400.0) and stats.throughput_fps == pytest.approx(200.0)
    runtime = open_runtime(artifact, "onnxruntime", threads=1)
    two = measure_concurrent(runtime, batch=2, workers=2, calls=3, warmup=1)
    one = measure(runtime, batch=2, calls=3, warmup=1)
    assert two.calls == 6 and one.calls == 3
    assert two.throughput_fps > 0 and one.throughput_fps > 0
