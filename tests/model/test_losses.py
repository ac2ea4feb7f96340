import math

import numpy as np
import pytest
import torch

from model.anomem import losses
from model.anomem.train import TrainState, train_stage1
from model.augment import epoch_order, epoch_steps
from model.data import load_clips
from model.pipeline import build_model, model_inputs
from tests.conftest import tiny_config


def test_nt_xent_is_low_for_matching_views_and_high_for_random() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = losses.nt_xent(z, z + 0.01 * torch.randn_like(z), temperature=0.2)
    random = losses.nt_xent(z, torch.randn(16, 8), temperature=0.2)
    assert matched < 0.5 < math.log(31) * 0.8 < random


def test_slot_variance_penalizes_collapsed_slots_only() -> None:
    collapsed = torch.ones(64, 16) + 1e-3 * torch.randn(64, 16)
    spread = torch.randn(4096, 16)
    assert losses.slot_variance(collapsed) > 0.2
    assert losses.slot_variance(spread) < 0.01


@pytest.mark.parametrize("memory_init", ["sample", "spread"])
def test_stage1_losses_finite_and_decreasing(ped2_like, memory_init: str) -> None:
    cfg = tiny_config()
    update = {"epochs": 6, "lr": 3e-3, "memory_init": memory_init}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = model_inputs(load_clips(ped2_like, cfg.input, split="train"), cfg)
    state = train_stage1(model, inputs, cfg.train, TrainState())
    assert len(state.stage1_losses) == 6
    assert np.all(np.isfinite(state.stage1_losses))
    assert np.mean(state.stage1_losses[-2:]) < state.stage1_losses[0]


def test_short_footage_gets_the_steps_of_long_footage_in_fresh_passes() -> None:
    assert epoch_steps(100, 1200, 32) == epoch_steps(5000, 1200, 32) == 37
    assert epoch_steps(100, None, 32) == 3  # None: one pass
    order = epoch_order(100, 1184, torch.Generator().manual_seed(0))
    counts = np.bincount(order.numpy(), minlength=100)
    assert len(order) == 1184 and counts.min() == 11 and counts.max() == 12  # 11.84 passes
    assert not torch.equal(order[:100], order[100:200])  # each pass in its own order
    # Footage longer than an epoch: one permutation, cut (what training did before).
    long = epoch_order(5000, 1184, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(
        long.numpy(), torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:1184].numpy()
    )
