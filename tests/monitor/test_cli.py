"""The anomon CLI end to end on a tiny generated scene: train, calibrate, eval, errors, --help."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from model.checkpoint import load_checkpoint
from model.runtime import BACKENDS
from monitor.cli import main
from monitor.cli.model import Backend
from tests.conftest import TINY, TINY_DAAD


def _anomon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def trained(ped2_like: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    config = out.with_name("tiny.yaml")
    config.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--data", str(ped2_like), "--out", str(out), "--config", str(config)]) == 0
    return out


def test_train_writes_a_complete_calibrated_checkpoint(trained: Path) -> None:
    _, meta = load_checkpoint(trained)
    assert meta.complete and meta.calibration is not None and meta.name == "anomem"
    assert meta.training["calibration_source"] == "held-out clips"
    assert len(meta.training["state"]["stage1_losses"]) == TINY["train"]["epochs"]
    assert len(meta.data_fingerprint) == 64


def test_resume_of_a_complete_run_changes_nothing(trained: Path, ped2_like: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    before = trained.read_bytes()
    args = ["train", "--data", str(ped2_like), "--out", str(trained), "--config", str(config), "--resume"]
    assert main(args) == 0
    assert trained.read_bytes() == before


def test_calibrate_updates_the_threshold(trained: Path, ped2_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "recal.safetensors"
    args = ["calibrate", "--checkpoint", str(trained), "--data", str(ped2_like / "train"), "--out", str(out)]
    assert main([*args, "--false-alarm-rate", "0.2"]) == 0
    _, meta = load_checkpoint(out)
    assert meta.calibration is not None and meta.calibration.false_alarm_rate == 0.2
    assert meta.calibration.frames == 72


def test_eval_reports_the_protocol_metrics(trained: Path, ped2_like: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(trained), "--data", str(ped2_like), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    for key in ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["frames"] == 48 and result["fps"] > 0
    assert result["smoothed_scores"] == "calibrated"  # as the monitor smooths them
    # The generated anomaly (a big bright fast block) is easy: even a 2-epoch tiny model must see it.
    assert result["auroc_causal_micro"] > 0.8


def test_export_then_eval_on_onnxruntime_matches_torch(
    trained: Path, ped2_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    results = {}
    for backend, artifact in (("torch", trained), ("onnxruntime", out)):
        report = tmp_path / f"{backend}.json"
        args = ["eval", "--checkpoint", str(artifact), "--data", str(ped2_like), "--json", str(report)]
        assert main([*args, "--backend", backend, "--device", "cpu"]) == 0
        results[backend] = json.loads(report.read_text())
    assert results["onnxruntime"]["backend"] == "onnxruntime" and results["torch"]["backend"] == "torch"
    for key in ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro"):
        assert round(results["onnxruntime"][key], 3) == round(results["torch"][key], 3)


def test_bad_config_fails_with_one_line_naming_the_field(ped2_like: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": -1}}))
    done = _anomon("train", "--data", str(ped2_like), "--out", str(tmp_path / "x"), "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "train.epochs" in done.stderr and "Traceback" not in done.stderr


def test_missing_data_and_checkpoint_are_one_line_errors(tmp_path: Path) -> None:
    done = _anomon("eval", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(tmp_path))
    assert done.returncode == 2 and "artifact not found" in done.stderr and "Traceback" not in done.stderr
    done = _anomon("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "data path not found" in done.stderr


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", "[default: cpu]"),
        ("calibrate", "[default: 0.01]"),
        ("refit", "KEY=VALUE"),
        ("eval", "[default: 32]"),
        ("export", "[default: fp32]"),
        ("bench", "[default: 1, 8, 32]"),
        ("ingest", "[default: anomon.frames]"),
        ("replay", "[default: 10.0]"),
        ("run", "--exit-when-idle"),
        ("demo", "[default: 120]"),
        ("console", "[default: 8080]"),
        ("broker", "[default: 9092]"),
        ("learn", "[default: earliest]"),
    ],
)
def test_every_command_has_help_with_defaults(command: str, shown: str) -> None:
    done = _anomon(command, "--help")
    assert done.returncode == 0 and f"Usage: anomon {command} [OPTIONS]" in done.stdout
    assert "--help" in done.stdout and shown in done.stdout


def test_help_lists_every_command_and_loads_no_torch() -> None:
    # The heavy libraries load inside the commands that need them, so --help answers at once.
    probe = (
        "import sys\nfrom monitor.cli import main\n"
        "for argv in (['--help'], ['eval', '--help'], ['run', '--help'], ['ingest', '--help'],\n"
        "             ['broker', '--help'], ['console', '--help'], ['learn', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as done:\n        assert done.code == 0\n"
        "print(sorted(m for m in ('torch', 'cv2', 'kafka', 'onnxruntime', 'fastapi') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]"), done.stdout[-300:]
    listing = _anomon("--help").stdout
    for command in (
        "train",
        "calibrate",
        "refit",
        "eval",
        "export",
        "bench",
        "ingest",
        "replay",
        "run",
        "demo",
        "console",
        "broker",
        "store",
        "learn",
    ):
        assert f" {command} " in listing


def test_backend_choices_are_the_runtimes() -> None:
    assert get_args(Backend) == BACKENDS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "anomon: error: Missing command; see 'anomon --help'"),
        (["nope"], "anomon: error: No such command 'nope'"),
        (["eval", "--checkpoint", "x"], "anomon eval: error: Missing option '--data'"),
        (["bench", "--artifact", "x", "--calls", "many"], "anomon bench: error: Invalid value for '--calls'"),
        (["export", "--checkpoint", "a", "--out", "b", "--precision", "fp8"], "'fp8' is not one of"),
        (["ingest", "--source", "s", "--camera", "c", "--fsp", "5"], "No such option: --fsp"),
        (["demo", "stray"], "anomon demo: error: Got unexpected extra argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert message in out.err and out.err.strip().count("\n") == 0 and not out.out


def test_anomon_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = ("eval", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(tmp_path))
    done = _anomon(*args, env={"ANOMON_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr and "artifact not found" in done.stderr


def test_bench_takes_batch_sizes_after_one_flag_or_repeated(trained: Path, tmp_path: Path) -> None:
    base = ["bench", "--artifact", str(trained), "--backend", "torch", "--device", "cpu", "--calls", "1"]
    for sizes in (["--batch-sizes", "1", "2"], ["--batch-sizes", "1", "--batch-sizes=2"]):
        report = tmp_path / "bench.json"
        assert main([*base, *sizes, "--warmup", "0", "--json", str(report)]) == 0
        rows = json.loads(report.read_text())["rows"]
        assert [row["batch"] for row in rows] == [1, 2] and all(row["fps"] > 0 for row in rows)


def test_daad_trains_calibrates_and_evaluates_through_the_same_commands(
    ped2_like: Path, tmp_path: Path
) -> None:
    config = tmp_path / "daad.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_DAAD.items() if k != "model"}))
    out = tmp_path / "daad.safetensors"
    model_args = [
        "--set",
        "model.name=daad",
        "--set",
        "model.widths=[8,16,32]",
        "--set",
        "model.block_size=16",
    ]
    args = ["train", "--data", str(ped2_like), "--out", str(out), "--config", str(config), *model_args]
    assert main([*args, "--set", "model.memory_stages=[2,3]"]) == 0
    _, meta = load_checkpoint(out)
    assert meta.name == "daad" and meta.config.model.name == "daad" and meta.complete
    recal = tmp_path / "recal.safetensors"
    calibrate = [
        "calibrate",
        "--checkpoint",
        str(out),
        "--data",
        str(ped2_like / "train"),
        "--out",
        str(recal),
    ]
    assert main([*calibrate, "--false-alarm-rate", "0.2"]) == 0
    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(recal), "--data", str(ped2_like), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["model"] == "daad" and result["frames"] == 48 and 0.0 <= result["auroc_causal_micro"] <= 1.0


def test_refit_writes_the_rescored_checkpoint_and_refuses_network_settings_in_one_line(
    trained: Path, ped2_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "topk4.safetensors"
    args = ["refit", "--checkpoint", str(trained), "--data", str(ped2_like), "--out", str(out)]
    assert main([*args, "--set", "model.topk=4"]) == 0
    assert load_checkpoint(out)[1].config.model.topk == 4
    done = _anomon(*args, "--set", "model.slots=4")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "model.slots" in done.stderr and "anomon train" in done.stderr and "Traceback" not in done.stderr
