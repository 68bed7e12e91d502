"""Functional dimension: the (2,3,1) numbers, the bound, monotonicity and refused architectures."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_climate.analysis.functional_dimension import (
    functional_dimension,
    hidden_neuron_count,
    rank_vs_points,
    symmetry_bound,
)


def he_normal_net(widths: list[int], seed: int) -> nn.Sequential:
    """ReLU MLP with He-normal weights and N(0, 1) biases (the note's generic initialisation)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(a, b)
        nn.init.kaiming_normal_(linear.weight)
        nn.init.normal_(linear.bias)
        layers += [linear] if i == len(widths) - 2 else [linear, nn.ReLU()]
    return nn.Sequential(*layers)


def test_generic_2_3_1_reaches_its_bound_of_10() -> None:
    points = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    results = [functional_dimension(he_normal_net([2, 3, 1], seed), points) for seed in range(10)]
    # draws whose 3 hidden neurons all switch on the points are generic and reach the bound 10;
    # the others (an always-active neuron at a random init: seeds 0 and 6 here) lose exactly 1
    switching = [r for r in results if r.dead == r.always_active == 0]
    assert len(switching) >= 7 and all(r.rank == 10 for r in switching)
    assert all(r.rank == 9 for r in results if r.always_active == 1 and r.dead == 0)
    result = switching[0]
    assert (result.num_parameters, result.bound, result.rank, result.gap) == (13, 10, 10, 0)
    assert (result.dead, result.always_active) == (0, 0)
    # the tolerance is NumPy's matrix_rank default and separates the 10 values from the 3 zeros
    assert result.tolerance == pytest.approx(
        float(result.singular_values.max()) * 2000 * torch.finfo(torch.float64).eps
    )
    assert result.singular_values[9] > 1e6 * result.tolerance > result.singular_values[10]


def test_dead_neuron_gives_7_and_always_active_gives_9() -> None:
    points = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    net = he_normal_net([2, 3, 1], seed=1)
    assert functional_dimension(net, points).rank == 10
    with torch.no_grad():
        net[0].bias[1] = -100.0
    dead = functional_dimension(net, points)
    assert (dead.rank, dead.dead, dead.always_active) == (7, 1, 0)
    with torch.no_grad():
        net[0].bias[1] = 100.0
    active = functional_dimension(net, points)
    assert (active.rank, active.dead, active.always_active) == (9, 0, 1)


@pytest.mark.parametrize("widths", [[2, 3, 1], [3, 5, 1], [3, 3, 3, 1], [1, 4, 1], [4, 4, 2]])
def test_rank_never_exceeds_bound_and_grows_with_points(widths: list[int]) -> None:
    for seed in range(3):
        net = he_normal_net(widths, seed)
        d = sum(p.numel() for p in net.parameters())
        points = torch.randn(10 * d, widths[0], generator=torch.Generator().manual_seed(seed))
        counts = [1, 2, 4, 8, d, 3 * d, 10 * d]
        ranks = rank_vs_points(net, points, counts)
        assert ranks == sorted(ranks)
        assert max(ranks) <= symmetry_bound(net) == d - sum(widths[1:-1])
        assert ranks[0] <= widths[-1]  # one point gives at most one row per output


def test_gram_method_agrees_with_svd() -> None:
    for seed in range(4):
        net = he_normal_net([3, 5, 5, 1], seed)
        points = torch.randn(1000, 3, generator=torch.Generator().manual_seed(seed))
        assert (
            functional_dimension(net, points, method="gram").rank
            == functional_dimension(net, points).rank
        )


def test_small_cnn_bound_counts_channels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 1)
    )
    assert hidden_neuron_count(net) == 2
    assert symmetry_bound(net) == (2 * 9 + 2) + (18 + 1) - 2
    result = functional_dimension(net, torch.randn(300, 1, 8, 8))
    assert result.rank <= result.bound
    assert (
        result.rank >= result.bound - 2
    )  # generic small CNN: at most a couple of hidden symmetries


def test_refused_architectures_name_the_fix() -> None:
    with pytest.raises(TypeError, match=r"Layer '1' \(BatchNorm1d\) is not supported"):
        functional_dimension(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), torch.randn(4, 2))
    with pytest.raises(TypeError, match=r"Layer '0.1' \(Tanh\)"):
        functional_dimension(
            nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Tanh())), torch.randn(4, 2)
        )
    with pytest.raises(TypeError, match=r"supports nn\.Sequential"):
        functional_dimension(nn.Linear(2, 1), torch.randn(4, 2))
    with pytest.raises(TypeError, match="inplace=False"):
        functional_dimension(
            nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True)), torch.randn(4, 2)
        )
    with pytest.raises(ValueError, match="counts must lie"):
        rank_vs_points(he_normal_net([2, 3, 1], 0), torch.randn(5, 2), [6])


def test_model_left_untouched() -> None:
    net = he_normal_net([2, 3, 1], seed=0).train()
    before = [p.clone() for p in net.parameters()]
    functional_dimension(net, torch.randn(50, 2))
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
