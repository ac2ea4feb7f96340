import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.calibration import calibrate
from model.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from model.pipeline import build_model, load_model, refit_score
from tests.conftest import PED2_CHECKPOINTS, tiny_config, tiny_daad_config


def _write(path: Path) -> torch.nn.Module:
    cfg = tiny_config()
    model = build_model(cfg).eval()
    meta = CheckpointMeta(
        name="anomem", version="t1", config=cfg, calibration=calibrate(torch.rand(50).numpy(), 0.1)
    )
    save_checkpoint(path, model.state_dict(), meta)
    return model


def test_round_trip_restores_weights_outputs_and_metadata(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors")
    restored, meta = load_model(tmp_path / "m.safetensors")
    frames = torch.randint(0, 256, (2, 2, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(model(frames), restored(frames), strict=True):
            torch.testing.assert_close(a, b)
    assert meta.version == "t1" and meta.config == tiny_config() and meta.calibration is not None
    assert len(meta.weights_sha256) == 64


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _write(path)
    tensors, meta = load_checkpoint(path)
    tensors["memories.0.slots"] += 1.0
    save_file(tensors, str(path), metadata={"anomon": meta.model_dump_json()})
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_checkpoint(path)


def test_foreign_and_garbage_files_are_refused(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no anomon metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def _rewrite_metadata(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a checkpoint's metadata as another anomon might have (same tensors, same hash)."""
    with safe_open(str(path), framework="pt") as handle:
        fields = json.loads(handle.metadata()["anomon"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    update(fields)
    save_file(tensors, str(path), metadata={"anomon": json.dumps(fields)})


def _as_format_1(fields: dict[str, Any]) -> None:
    """Format 1's model configs had settings since removed, here at values no longer offered."""
    fields["format"] = "anomon.checkpoint/1"
    model = fields["config"]["model"]
    model["edge_motion"] = "keep"
    if model["name"] == "anomem":
        model.update(standardize_terms=False, topk_pooling="cells", motion_pooling="cells")
    else:
        model["latent_stats"] = "frame"


@pytest.mark.parametrize("name", ["anomem", "daad"])
def test_checkpoint_of_an_older_format_is_refused_with_the_command_that_rebuilds_it(
    tmp_path: Path, ped2_like: Path, name: str
) -> None:
    """One line naming its format and model version and the command that rebuilds it (training:
    refit reads only the current format, so it cannot)."""
    cfg = tiny_config() if name == "anomem" else tiny_daad_config()
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, build_model(cfg).state_dict(), CheckpointMeta(name=name, version="v8", config=cfg))
    _rewrite_metadata(path, _as_format_1)
    expected = (
        f"{path}: checkpoint format anomon.checkpoint/1 (model {name} v8) is older than this anomon "
        f"reads ({FORMAT}): rebuild it with anomon train --config CONFIG --data TRAINING_DATA --out {path}"
    )
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == expected
    with pytest.raises(CheckpointError, match="older than this anomon reads"):
        refit_score(path, ped2_like, {"model.topk": 2})


def test_checkpoint_of_another_or_no_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _write(path)
    _rewrite_metadata(path, lambda fields: fields.update(format="anomon.checkpoint/3"))
    with pytest.raises(CheckpointError, match=r"format 'anomon\.checkpoint/3' \(model anomem t1\) is not"):
        load_checkpoint(path)
    _rewrite_metadata(path, lambda fields: fields.pop("format"))
    with pytest.raises(CheckpointError, match=r"format None \(model anomem t1\) is not supported"):
        load_checkpoint(path)


@pytest.mark.parametrize("path", PED2_CHECKPOINTS, ids=lambda p: p.stem)
def test_committed_checkpoints_are_of_the_current_format(path: Path) -> None:
    assert load_checkpoint(path)[1].format == FORMAT
