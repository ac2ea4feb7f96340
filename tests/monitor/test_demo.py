"""`anomon demo` start to finish: broker, on-the-spot model, replay, service, printed results."""

import re
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.demo import run_demo, street_scene


def test_street_scene_marks_exactly_the_anomalous_frames() -> None:
    images, masks, labels = street_scene(20, anomalous_from=12, seed=0)
    assert labels == [0] * 12 + [1] * 8
    assert all(m.any() for m in masks[12:]) and not any(m.any() for m in masks[:12])
    assert images[0].shape == (120, 180)


def test_demo_runs_start_to_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(frames=40, fps=40.0, http_port=0, workdir=tmp_path)
    printed = capsys.readouterr().out
    assert result.scores == 40  # every frame scored and published
    assert any(a["type"] == "start" for a in result.alerts) and any(a["type"] == "end" for a in result.alerts)
    assert result.flagged_anomalous >= result.anomalous_frames // 2  # the block is easy to see
    assert result.flagged_normal <= 2
    assert "ALERT  start" in printed and "done: 40/40 frames scored" in printed
    # Each score line says how far the raw score is from the threshold, not only the saturated [0, 1] value.
    explained = re.search(r"0\.50 the model's threshold \(raw (-?[0-9.]+)", printed)
    assert explained, printed
    lines = re.findall(
        r"score  demo-cam-1 #\s*\d+  ([0-9.]+) \(raw\s+(-?[0-9.]+), threshold ([0-9.]+)\)", printed
    )
    assert lines and all(threshold == explained.group(1) for _, _, threshold in lines)
    assert all(
        (float(raw) >= float(t)) == (float(score) >= 0.5) for score, raw, t in lines if score != "0.50"
    )


def test_demo_has_help() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
