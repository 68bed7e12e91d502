from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_climate.layers import MinMeanMaxConstraint, OrderingConstraint


def _adversarial(c: int = 3, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, c, size, size, generator=g) * 5
    y[0] = torch.tensor([1e4, -1e4, 1e4]).view(3, 1, 1)[:c]  # huge raw values of both signs
    y[1, 0] = 50.0  # "tasmin" above "tas" in the raw output
    y[1, 2] = -50.0
    y[2] = 0.0
    return y


@pytest.mark.parametrize("positive", ["softplus", "relu"])
def test_min_mean_max_order_holds_on_adversarial_input(positive: str) -> None:
    out = MinMeanMaxConstraint(positive=positive)(_adversarial())
    assert torch.isfinite(out).all()
    assert (out[:, 0] <= out[:, 1]).all() and (out[:, 1] <= out[:, 2]).all()
    # the anchor (tas) passes through unchanged
    assert torch.equal(out[:, 1], _adversarial()[:, 1])


def test_general_order_with_passthrough_channel() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, 5, 4, 4, generator=g) * 10
    layer = OrderingConstraint(order=[4, 0, 2, 3], anchor=0)
    out = layer(y)
    assert (out[:, 4] <= out[:, 0]).all()
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 2] <= out[:, 3]).all()
    assert torch.equal(out[:, 1], y[:, 1]) and torch.equal(out[:, 4], y[:, 4])
    # the gap above the anchor is softplus of the raw channel
    torch.testing.assert_close(out[:, 0] - out[:, 4], F.softplus(y[:, 0]))


def test_gradients_flow_to_every_ordered_channel() -> None:
    y = torch.randn(2, 3, 4, 4, requires_grad=True)
    MinMeanMaxConstraint()(y).sum().backward()
    assert (y.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


@pytest.mark.parametrize("conservation", ["add", "softmax", "scadd"])
def test_composes_with_conservation(conservation: str) -> None:
    g = torch.Generator().manual_seed(2)
    hr = torch.sort(torch.rand(3, 3, 8, 8, generator=g) * 0.8 + 0.1, dim=1).values
    lr = F.avg_pool2d(hr, 4)
    raw = torch.randn(3, 3, 8, 8, generator=g) * 3
    raw[0] = 20.0
    out = MinMeanMaxConstraint(conservation=conservation)(raw, lr)
    assert (out[:, 0] <= out[:, 1]).all() and (out[:, 1] <= out[:, 2]).all()
    torch.testing.assert_close(F.avg_pool2d(out, 4), lr, rtol=0, atol=2e-6)


def test_conservation_gradients_flow() -> None:
    hr = torch.sort(torch.rand(2, 3, 4, 4), dim=1).values
    raw = torch.randn(2, 3, 4, 4, requires_grad=True)
    MinMeanMaxConstraint(conservation="add")(raw, F.avg_pool2d(hr, 2)).pow(2).sum().backward()
    assert (raw.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least two distinct"):
        OrderingConstraint(order=[1, 1])
    with pytest.raises(ValueError, match="anchor must be"):
        OrderingConstraint(order=[0, 1], anchor=2)
    with pytest.raises(ValueError, match="more than 5 channels"):
        OrderingConstraint(order=[0, 5])(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="needs the low-resolution input"):
        MinMeanMaxConstraint(conservation="add")(torch.zeros(1, 3, 2, 2))
    unordered = torch.zeros(1, 3, 1, 1)
    unordered[0, 0] = 1.0  # tasmin above tas in the low-res data
    with pytest.raises(ValueError, match="violates the order"):
        MinMeanMaxConstraint(conservation="add")(torch.zeros(1, 3, 2, 2), unordered)
