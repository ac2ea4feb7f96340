"""benchmarks/gpu_check.sh and gpu_check.py on a machine without a GPU: the refusal, the flags, the
collector's parity verdict and result files; the runtime options added to runtimes.py for it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.sh"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
from runtimes import parse_runtime, ratios  # noqa: E402

BASH = shutil.which("bash") or "/bin/bash"


def _run(args: list[str], path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    env.pop("OUT", None)
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _bin(tmp_path: Path, nvidia_smi: str | None) -> str:
    """A PATH holding only `dirname` (the script's first need) and, if given, a fake nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!{BASH}\n{nvidia_smi}\n")
        fake.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    "nvidia_smi",
    [None, 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver"; exit 9'],
    ids=["no nvidia-smi", "nvidia-smi sees no GPU"],
)
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path: Path, nvidia_smi: str | None) -> None:
    done = _run([], _bin(tmp_path, nvidia_smi))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no NVIDIA GPU here"), done.stderr


def test_help_and_a_wrong_flag() -> None:
    path = os.environ["PATH"]  # neither looks for a GPU
    shown = _run(["--help"], path)
    assert shown.returncode == 0 and "--prepare" in shown.stdout and "--require-tensorrt" in shown.stdout
    wrong = _run(["--no-such-flag"], path)
    assert (
        wrong.returncode == 64
        and wrong.stderr.strip() == "gpu_check: unknown option --no-such-flag (see --help)"
    )


def test_the_script_parses_and_passes_shellcheck() -> None:
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_runtime_specs() -> None:
    assert parse_runtime("tensorrt-int8", "cpu") == ("tensorrt", "int8")
    assert parse_runtime("torch-fp16", "cuda") == ("torch", "fp16")
    for spec, device, says in (
        ("torch-fp16", "cpu", "needs --device cuda"),
        ("torch-int8", "cuda", "fp32 and fp16 only"),
        ("tensorrt", "cuda", "BACKEND-PRECISION"),
        ("openvino-fp32", "cpu", "BACKEND-PRECISION"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_runtime(spec, device)


def _row(backend: str, precision: str, batch: int, fps: float) -> dict:
    return {
        "backend": backend,
        "precision": precision,
        "device": "cuda:0",
        "batch": batch,
        "calls": 18,
        "p50_ms": batch * 1e3 / fps,
        "p99_ms": batch * 1e3 / fps * 1.2,
        "fps": fps,
        "throughput_fps": fps,
    }


def test_ratios_are_taken_only_for_pairs_that_were_both_timed() -> None:
    rows = [
        _row("torch", "fp32", 8, 400.0),
        _row("tensorrt", "fp16", 8, 2000.0),
        _row("onnxruntime", "fp16", 8, 50.0),
    ]
    assert ratios(rows, [8]) == {"tensorrt_fp16_vs_torch_fp32_batch8": 5.0}


def _accuracy(causal: float, pixel: float) -> dict:
    return {
        "auroc_causal_micro": causal,
        "auroc_paper_micro": causal,
        "auroc_macro": causal,
        "pixel_auroc": pixel,
    }


def _pieces(tmp_path: Path, trt_fp16_causal: float) -> list[str]:
    """The files gpu_check.sh hands the collector, shaped as runtimes.py, service_ceiling.py and
    `gpu_check.py probe` write them (a machine whose TensorRT does not import: torch rows only)."""
    run = {
        "command": "python benchmarks/runtimes.py --device cuda",
        "date": "2026-12-04T00:00:00+00:00",
        "artifacts": {},
        "protocol": "interleaved",
        "int8": None,
        "ratios": {},
        "machine": {"threads": 16, "torch": "2.11.0", "onnxruntime": "1.30.0", "gpu": "NVIDIA H200"},
        "rows": [_row("torch", "fp16", 8, 1500.0), _row("onnxruntime", "fp16", 8, 90.0)],
        "accuracy": {
            "torch-fp16": _accuracy(trt_fp16_causal, 0.95),
            "onnxruntime-fp16": _accuracy(0.9450, 0.95),
        },
    }
    camera = {
        "fps": 900.0,
        "fps_rounds": [900.0],
        "service_cpu_us_per_frame": 800.0,
        "broker_cpu_us_per_frame": 100.0,
        "live_e2e_p50_ms": 20.0,
        "live_e2e_p99_ms": 60.0,
    }
    e2e = {
        "command": "python benchmarks/service_ceiling.py --backend torch",
        "settings": {
            "frames_per_saturated_run": 3200,
            "max_batch": 32,
            "live_fps": 200.0,
            "live_seconds": 4.0,
            "model": {"backend": "torch", "precision": "fp16", "device": "cuda"},
        },
        "summary": {"after": {"commit": "unknown", "cameras": {"1": camera, "16": camera}, "profile": None}},
    }
    environment = {
        "gpu": {"name": "NVIDIA H200", "nvidia_smi": "NVIDIA H200, 580.159.04, 143771 MiB"},
        "cpu_cores": 16,
        "python": "3.12.3",
        "torch": "2.11.0",
        "torch_cuda": "13.0",
        "onnxruntime": "1.30.0",
        "onnxruntime_providers": ["CPUExecutionProvider"],
        "tensorrt": None,
        "tensorrt_missing": "ModuleNotFoundError: No module named 'tensorrt'",
    }
    ped2 = tmp_path / "ped2"
    for clip, frames in (("01", 3), ("04", 2)):
        (ped2 / "test" / clip).mkdir(parents=True)
        for i in range(frames):
            (ped2 / "test" / clip / f"{i:03d}.jpg").write_bytes(b"")
    files = {"runtimes": {"runs": {"anomem_ped2.safetensors": run}}, "e2e": e2e, "environment": environment}
    for name, value in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(value))
    (tmp_path / "timings.tsv").write_text("wheels\t4\nmodel only\t95\n")
    return [
        "collect",
        "--environment",
        str(tmp_path / "environment.json"),
        "--runtimes",
        str(tmp_path / "runtimes.json"),
        "--e2e",
        str(tmp_path / "e2e.json"),
        "--ceiling",
        str(tmp_path / "absent.json"),
        "--timings",
        str(tmp_path / "timings.tsv"),
        "--data",
        str(ped2),
        "--commit",
        "abc123",
        "--out",
        str(tmp_path / "out" / "gpu_check.json"),
    ]


def test_collect_merges_the_pieces_and_passes_parity_within_tolerance(tmp_path: Path) -> None:
    assert gpu_check.main(_pieces(tmp_path, trt_fp16_causal=0.9470)) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["commit"] == "abc123" and report["date"][:4].isdigit()
    (check,) = report["parity"]
    assert check["runtime"] == "torch-fp16" and check["reference"] == "onnxruntime-fp16" and check["ok"]
    assert check["delta_auroc_causal_micro"] == pytest.approx(0.0020)
    assert report["end_to_end"]["cameras"]["16"]["fps"] == 900.0 and report["ceiling"] is None
    assert report["data"]["test_clips"] == ["01", "04"] and report["data"]["test_frames"] == 5
    assert report["step_seconds"] == {"wheels": 4.0, "model only": 95.0}
    page = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "TensorRT not available: ModuleNotFoundError" in page and "| 16 | **900** |" in page
    line = gpu_check.headline(report)
    assert "TensorRT not available" in line and "torch FP16 batch 8 **1500** frames/s" in line
    assert "900 frames/s at 16 cameras" in line and "parity with ONNX Runtime holds" in line


def test_collect_exits_1_when_a_runtime_strays_from_onnx_runtime(tmp_path: Path) -> None:
    assert gpu_check.main(_pieces(tmp_path, trt_fp16_causal=0.9300)) == 1  # 0.015 below, tolerance 0.005
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["parity_ok"] is False and not report["parity"][0]["ok"]
    assert "**no**" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert "parity with ONNX Runtime **fails**" in gpu_check.headline(report)


def test_an_export_is_reused_only_for_its_own_checkpoint_and_precision(tmp_path: Path) -> None:
    from runtimes import exported

    daad, anomem = (str(BENCHMARKS / "artifacts" / f"{n}_ped2.safetensors") for n in ("daad", "anomem"))
    folder = exported(daad, tmp_path / "fp32", "fp32", "", "cpu")  # exports: the folder is empty
    stamp = (folder / "model.json").stat().st_mtime_ns
    assert exported(daad, folder, "fp32", "", "cpu") == folder
    assert (folder / "model.json").stat().st_mtime_ns == stamp  # reused, not exported again
    with pytest.raises(ValueError, match="holds another export"):
        exported(anomem, folder, "fp32", "", "cpu")
    with pytest.raises(ValueError, match="holds another export"):
        exported(daad, folder, "fp16", "", "cpu")
