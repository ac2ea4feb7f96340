"""The block-wise memory of DAAD: block division and assembly, shrinkage, addressing."""

import pytest
import torch
import torch.nn.functional as F

from model.memory import BlockMemory, assemble_blocks, divide_blocks, hard_shrink


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_division_matches_unfold_and_assembly_inverts_it(block: int) -> None:
    x = torch.randn(3, 5, 16, 24)
    blocks = divide_blocks(x, block)
    assert blocks.shape == (3, (16 // block) * (24 // block), 5 * block * block)
    # Same blocks, same order as F.unfold (which does not export to ONNX with a dynamic batch).
    torch.testing.assert_close(blocks, F.unfold(x, block, stride=block).transpose(1, 2))
    torch.testing.assert_close(assemble_blocks(blocks, 5, 16, 24, block), x)


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_identity_memory_rebuilds_the_map_it_holds(block: int) -> None:
    """A memory whose items are exactly the map's blocks reads every block back in place."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 16, 16)  # 16 channels: random blocks are far apart even at block 1
    n_blocks = (16 // block) ** 2
    memory = BlockMemory(channels=16, block=block, slots=n_blocks, beta=1000.0, shrink=1.0)
    memory.slots.data.copy_(divide_blocks(x, block)[0])
    readout, weights = memory(x)
    assert weights.shape == (1, n_blocks, n_blocks)
    torch.testing.assert_close(weights[0], torch.eye(n_blocks), atol=1e-5, rtol=0)
    torch.testing.assert_close(readout, x, atol=1e-5, rtol=1e-5)


def test_unseen_blocks_are_replaced_by_memorized_ones() -> None:
    torch.manual_seed(0)
    seen = torch.rand(1, 4, 8, 8)
    memory = BlockMemory(channels=4, block=4, slots=4, beta=50.0, shrink=1.0)
    memory.initialize_slots(seen, torch.Generator().manual_seed(0))
    unseen = -seen
    readout, _ = memory(unseen)
    assert (readout - unseen).abs().mean() > 0.5  # the read-out is built from normal items only


def test_hard_shrinkage_zeroes_small_weights_and_renormalizes() -> None:
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(64, 100) * 2, dim=-1)
    threshold = 2.0 / 100
    shrunk = hard_shrink(weights, threshold)
    assert torch.all(shrunk[weights < threshold] == 0)
    assert torch.all(shrunk[weights > threshold] > 0)
    torch.testing.assert_close(shrunk.sum(-1), torch.ones(64))
    assert (shrunk > 0).sum() < 0.5 * (weights > 0).sum()  # sparse: most items dropped
    # Kept weights keep their proportions.
    row = weights[0] > threshold
    torch.testing.assert_close(shrunk[0, row] / shrunk[0, row].sum(), weights[0, row] / weights[0, row].sum())
    torch.testing.assert_close(hard_shrink(weights, 0.0), weights)


def test_shrinkage_lets_gradients_reach_kept_items_only() -> None:
    logits = torch.tensor([[3.0, 2.0, -4.0, -5.0]], requires_grad=True)
    shrunk = hard_shrink(logits.softmax(-1), threshold=0.05)
    (shrunk * torch.tensor([1.0, -1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert shrunk[0, 2] == 0 and shrunk[0, 3] == 0 and logits.grad[0, :2].abs().sum() > 0


def test_memory_gradients_reach_items_and_features() -> None:
    memory = BlockMemory(channels=3, block=2, slots=8, beta=10.0, shrink=1.0)
    features = torch.randn(2, 3, 4, 6, requires_grad=True)
    readout, weights = memory(features)
    assert readout.shape == features.shape and weights.shape == (2, 6, 8)
    readout.pow(2).sum().backward()
    for grad in (memory.slots.grad, features.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
