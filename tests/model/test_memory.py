import torch

from model.memory import HopfieldMemory, cosine_addressing


def test_addressing_is_a_distribution_over_slots() -> None:
    weights = cosine_addressing(torch.randn(5, 7, 8), torch.randn(11, 8), beta=4.0)
    assert weights.shape == (5, 7, 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 7))


def test_readout_shape_and_gradients_reach_slots_and_projections() -> None:
    memory = HopfieldMemory(channels=12, slots=32, dim=16, beta=8.0)
    features = torch.randn(2, 12, 5, 7, requires_grad=True)
    readout = memory(features)
    assert readout.shape == features.shape
    readout.pow(2).sum().backward()
    for grad in (memory.slots.grad, memory.query.weight.grad, memory.out.weight.grad, features.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_memory_holding_the_features_reads_them_back() -> None:
    torch.manual_seed(0)
    memory = HopfieldMemory(channels=6, slots=12, dim=8, beta=500.0)
    features = torch.nn.functional.normalize(torch.randn(1, 6, 3, 4), dim=1)  # 12 positions = 12 slots
    memory.initialize_slots(features, torch.Generator().manual_seed(0))
    torch.testing.assert_close(memory(features), features, atol=1e-4, rtol=1e-4)


def test_readout_of_an_unseen_feature_differs() -> None:
    torch.manual_seed(0)
    memory = HopfieldMemory(channels=6, slots=12, dim=8, beta=500.0)
    seen = torch.nn.functional.normalize(torch.randn(1, 6, 3, 4), dim=1)
    memory.initialize_slots(seen)
    unseen = -seen[:, :, :1, :1]
    assert (memory(unseen) - unseen).norm() > 0.5
