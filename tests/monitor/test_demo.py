"""`anomon demo` start to finish: broker, on-the-spot model, replay, service, printed results."""

import contextlib
import json
import re
import threading
import time
import urllib.request
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
    seen: dict[str, set[str]] = {"alerts": set()}
    urls: list[str] = []

    def watch(url: str) -> None:  # the console, polled as a user's browser would, while the demo runs
        urls.append(url)

        def poll() -> None:
            while len(urls) == 1:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{url}/api/alerts", timeout=2) as r,
                ):
                    seen["alerts"] |= {a["alert_id"] for a in json.load(r)["alerts"]}
                time.sleep(0.2)

        threading.Thread(target=poll, daemon=True).start()

    result = run_demo(
        frames=40, fps=40.0, http_port=0, workdir=tmp_path, console_port=0, stay_seconds=2, on_console=watch
    )
    urls.append("done")
    printed = capsys.readouterr().out
    assert result.console_url == urls[0] and f"console on {urls[0]}" in printed
    started = {a["alert_id"] for a in result.alerts if a["type"] == "start"}
    assert started and started <= seen["alerts"]  # the demo's alert reached the console
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
