import torch

from model.memory import HopfieldMemory, cosine_addressing, sample_rows, spread_rows


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


def _background_and_walkers() -> torch.Tensor:
    """1000 rows around one direction (background cells) and 20 around another (a walker's cells)."""
    g = torch.Generator().manual_seed(0)
    background = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.02 * torch.randn(1000, 4, generator=g)
    walkers = torch.tensor([0.0, 1.0, 0.0, 0.0]) + 0.02 * torch.randn(20, 4, generator=g)
    return torch.cat([background, walkers])


def test_spread_seeding_gives_rare_content_slots_where_uniform_draws_do_not() -> None:
    rows = _background_and_walkers()
    walker = lambda picked: int((picked[:, 1] > 0.5).sum())  # noqa: E731
    spread_hits = [walker(spread_rows(rows, 4, torch.Generator().manual_seed(s))) for s in range(20)]
    uniform_hits = [walker(sample_rows(rows, 4, torch.Generator().manual_seed(s))) for s in range(20)]
    assert all(h >= 1 for h in spread_hits)  # the second pick is the far cluster with p ~ 0.96
    assert sum(h >= 1 for h in uniform_hits) <= 5  # 4 uniform draws miss 20 of 1020 rows 92% of times


def test_spread_seeding_draws_distinct_rows_and_is_seeded() -> None:
    rows = _background_and_walkers()
    a = spread_rows(rows, 64, torch.Generator().manual_seed(3))
    b = spread_rows(rows, 64, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert torch.unique(a, dim=0).shape[0] == 64
    few = spread_rows(rows[:10], 16, torch.Generator().manual_seed(0))  # fewer rows than slots
    assert few.shape == (16, 4)


def test_spread_initialized_memory_reads_back_its_rare_content() -> None:
    rows = _background_and_walkers()
    features = rows.t().reshape(1, 4, 30, 34)
    memory = HopfieldMemory(channels=4, slots=8, dim=4, beta=50.0)
    with torch.no_grad():
        memory.query.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        memory.out.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    memory.initialize_slots(features, torch.Generator().manual_seed(0), spread=True)
    walker = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
    assert (memory(walker) - walker).norm() < 0.1
