"""The model section is chosen by name: AnoMem by default, DAAD with `name: daad`."""

from pathlib import Path

import pytest
import yaml

from model.checkpoint import load_checkpoint
from model.config import AnoMemConfig, ConfigError, DAADConfig, load_config, parse_config
from tests.conftest import TINY, TINY_DAAD

ARTIFACT = Path(__file__).resolve().parents[2] / "benchmarks" / "artifacts" / "anomem_ped2.safetensors"


def test_default_and_nameless_model_sections_are_anomem() -> None:
    assert isinstance(load_config(None).model, AnoMemConfig)
    assert "name" not in TINY["model"]
    assert isinstance(parse_config(TINY).model, AnoMemConfig)


def test_daad_is_chosen_by_name_in_yaml_or_override(tmp_path: Path) -> None:
    path = tmp_path / "daad.yaml"
    path.write_text(yaml.safe_dump(TINY_DAAD))
    cfg = load_config(path)
    assert isinstance(cfg.model, DAADConfig) and cfg.model.widths == (8, 16, 32)
    cfg = load_config(None, {"model.name": "daad", "model.block_size": 16})
    assert isinstance(cfg.model, DAADConfig) and cfg.model.block_size == 16


def test_config_round_trips_through_json_with_its_model_kind() -> None:
    for data in (TINY, TINY_DAAD):
        cfg = parse_config(data)
        assert type(parse_config(cfg.model_dump(mode="json")).model) is type(cfg.model)


def test_committed_anomem_checkpoint_still_validates() -> None:
    _, meta = load_checkpoint(ARTIFACT)
    assert isinstance(meta.config.model, AnoMemConfig) and meta.name == "anomem"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model.name": "vae"}, "model.name"),
        ({"model.name": "daad", "model.block_size": 12}, "model.block_size"),
        ({"model.name": "daad", "model.memory_stages": [2, 3]}, "model.memory_stages"),
        ({"model.name": "daad", "model.memory_stages": [0, 5]}, "model.memory_stages"),
        ({"model.name": "daad", "model.widths": [8]}, "model.widths"),
        ({"model.name": "daad", "model.slots": 1}, "model.slots"),
        ({"model.name": "daad", "model.scales": [0]}, "model.scales"),  # an AnoMem field
        ({"train.daad.w_adversarial": -1}, "train.daad.w_adversarial"),
        ({"train.daad.discriminator_lr": 0}, "train.daad.discriminator_lr"),
        ({"model.score_weights": [1.0, 1.0, 1.0]}, "model.score_weights"),  # 3 scales + motion = 4
        ({"input.motion": False, "model.score_weights": [1.0] * 4}, "model.score_weights"),
        # Settings of older models are refused, not ignored (see tests/model/test_checkpoint.py).
        ({"model.standardize_terms": False}, "model.standardize_terms"),
        ({"model.motion_pooling": "cells"}, "model.motion_pooling"),
        ({"model.name": "daad", "model.edge_motion": "keep"}, "model.edge_motion"),
        ({"model.name": "daad", "model.latent_stats": "frame"}, "model.latent_stats"),
    ],
)
def test_bad_values_name_the_dotted_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}'"):
        load_config(None, overrides)
