"""The cameras file: one schema for ingest's sources and the service's per-camera settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from model.config import ConfigError
from monitor.cameras_file import load_cameras_file, parse_cameras
from monitor.config import load_service_config

SITE = {
    "defaults": {"fps": 10, "on_threshold": 0.6, "snapshot": {"enabled": False}},
    "cameras": {
        "gate-1": {"source": "rtsp://gate-1.local/stream", "resize": "640x360", "min_frames": 5},
        "lobby": {"source": "/footage/lobby.mp4", "fps": 25, "jpeg_quality": 70},
        101: {"source": "0"},  # YAML reads the id as a number
    },
}


def test_sources_and_camera_settings_come_from_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(SITE))
    cameras = load_cameras_file(path)
    assert list(cameras.sources) == ["gate-1", "lobby", "101"]
    gate, lobby = cameras.sources["gate-1"], cameras.sources["lobby"]
    assert (gate.source, gate.fps, gate.resize, gate.jpeg_quality) == (
        "rtsp://gate-1.local/stream",
        10,
        (640, 360),
        90,
    )
    assert (lobby.fps, lobby.resize, lobby.jpeg_quality) == (25, None, 70)
    assert cameras.settings.for_camera("gate-1").min_frames == 5
    assert cameras.settings.for_camera("lobby").on_threshold == 0.6
    assert not cameras.settings.for_camera("101").snapshot.enabled


def test_anomon_run_lays_the_files_camera_settings_over_its_config(tmp_path: Path) -> None:
    (tmp_path / "cameras.yaml").write_text(yaml.safe_dump(SITE))
    (tmp_path / "anomon.yaml").write_text(
        yaml.safe_dump(
            {
                "cameras": {
                    "defaults": {"off_threshold": 0.3, "snapshot": {"quality": 60}},
                    "cameras": {"gate-1": {"min_frames": 2, "cutoff_seconds": 9}, "yard": {"min_frames": 7}},
                }
            }
        )
    )
    cfg = load_service_config(tmp_path / "anomon.yaml", environ={}, cameras_file=tmp_path / "cameras.yaml")
    gate = cfg.cameras.for_camera("gate-1")
    # The file's fields win; the config's other fields stay, down to one field of a section.
    assert (gate.min_frames, gate.cutoff_seconds, gate.on_threshold, gate.off_threshold) == (5, 9, 0.6, 0.3)
    assert (gate.snapshot.enabled, gate.snapshot.quality) == (False, 60)
    assert cfg.cameras.for_camera("yard").min_frames == 7
    # Source fields are ingest's: they do not reach the service's settings.
    assert "resize" not in cfg.cameras.cameras["gate-1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"cameras": {"a": {"fps": 5}}}, "field 'cameras.a.source': missing; give the camera's video file"),
        (
            {"cameras": {"a": {"source": "x", "fsp": 5}}},
            "field 'cameras.a.fsp': unknown; a camera takes source, fps",
        ),
        (
            {"cameras": {"a": {"source": "x", "fps": 0}}},
            "field 'cameras.a.fps': Input should be greater than 0",
        ),
        (
            {"cameras": {"a": {"source": "x", "resize": "big"}}},
            "'cameras.a.resize': 'big' is not WIDTHxHEIGHT; write e.g.",
        ),
        ({"cameras": {"a b": {"source": "x"}}}, "camera id 'a b': use 1 to 128 characters of A-Z a-z 0-9"),
        (
            {"cameras": {"a": {"source": "x", "min_frames": 0}}},
            "field 'cameras.a.min_frames': Input should be greater",
        ),
        (
            {"cameras": {"a": {"source": "x", "on_threshold": 0.3}}},
            "must be below on_threshold (0.3); lower off_thr",
        ),
        ({"defaults": {"source": "x"}}, "field 'defaults.source': a source belongs to one camera; move it"),
        ({"defaults": {"on_threshold": 2}}, "field 'defaults.on_threshold': Input should be less than 1"),
        ({"camera": {}}, "the top level must be a mapping of defaults: and cameras: (not camera)"),
        ({"cameras": ["a", "b"]}, "field 'cameras': expected a mapping of fields, not list"),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_field_and_the_fix(
    content: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as err:
        load_cameras_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_camera_given_twice_is_refused_rather_than_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n  gate-1: {source: a.mp4}\n  gate-1: {source: b.mp4}\n")
    with pytest.raises(ConfigError, match=r"line 3: 'gate-1' is given twice; rename one"):
        load_cameras_file(path)
    with pytest.raises(ConfigError, match="cameras file not found"):
        load_cameras_file(tmp_path / "nope.yaml")
    assert parse_cameras(None).sources == {}  # an empty file: no cameras yet
