from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_climate.layers import (
    AdditiveConstraint,
    MultiplicativeConstraint,
    ScaledAdditiveConstraint,
    SoftmaxConstraint,
    build_constraint,
)
from lightning_climate.layers.constraints import block_mean, infer_factor, upsample_blocks

FACTORS = [1, 2, 3, 4, 8, 16]


def _inputs(name: str, factor: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Raw outputs and low-res inputs in each layer's documented domain."""
    g = torch.Generator().manual_seed(seed)
    h = 3
    y = torch.randn(2, 3, h * factor, h * factor, generator=g, dtype=dtype)
    x = torch.rand(2, 3, h, h, generator=g, dtype=dtype)
    if name == "mult":
        y = y.abs() + 0.1
    elif name == "softmax":
        y = 10 * y
    elif name == "scadd":
        y = torch.tanh(y)
        x = 1.8 * x - 0.9
    return y, x


@pytest.mark.parametrize("name", ["add", "mult", "softmax", "scadd"])
@pytest.mark.parametrize("factor", FACTORS)
def test_block_mean_equals_lowres_float32(name: str, factor: int) -> None:
    y, x = _inputs(name, factor)
    out = build_constraint(name)(y, x)
    assert out.shape == y.shape and out.dtype == torch.float32
    pooled = F.avg_pool2d(out, factor) if factor > 1 else out
    assert torch.max((pooled - x).abs() / x.abs().clamp_min(1)) <= 1e-6


@pytest.mark.parametrize("name", ["add", "mult", "softmax", "scadd"])
def test_block_mean_equals_lowres_float64(name: str) -> None:
    y, x = _inputs(name, 4, torch.float64)
    out = build_constraint(name)(y, x)
    assert torch.max((F.avg_pool2d(out, 4) - x).abs()) <= 1e-12


@pytest.mark.parametrize("name", ["add", "mult", "softmax", "scadd"])
def test_bfloat16_tolerance(name: str) -> None:
    """bf16 in, bf16 out: the final cast bounds the error by the bf16 epsilon 2**-7."""
    y, x = _inputs(name, 4)
    out = build_constraint(name)(y.bfloat16(), x.bfloat16())
    assert out.dtype == torch.bfloat16
    rel = (F.avg_pool2d(out.float(), 4) - x.bfloat16().float()).abs() / x.abs().clamp_min(1)
    assert rel.max() <= 2**-7


@pytest.mark.parametrize("name", ["add", "mult", "softmax"])
def test_factor_one_is_identity_on_lowres(name: str) -> None:
    y, x = _inputs(name, 1)
    torch.testing.assert_close(build_constraint(name)(y, x), x, rtol=1e-6, atol=1e-6)


def test_softmax_factor_one_is_exact() -> None:
    y, x = _inputs("softmax", 1)
    assert torch.equal(SoftmaxConstraint()(y, x), x)


def test_non_square_factor() -> None:
    y = torch.randn(1, 2, 8, 12)
    x = torch.randn(1, 2, 4, 3)
    assert infer_factor(y, x) == (2, 4)
    out = AdditiveConstraint()(y, x)
    torch.testing.assert_close(F.avg_pool2d(out, (2, 4)), x, rtol=0, atol=1e-6)


def test_additive_matches_formula() -> None:
    y = torch.arange(16.0).reshape(1, 1, 4, 4)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    out = AdditiveConstraint()(y, x)
    # top-left block of y is [[0, 1], [4, 5]] with mean 2.5; shift by 0 - 2.5
    assert torch.equal(out[0, 0, :2, :2], torch.tensor([[-2.5, -1.5], [1.5, 2.5]]))


def test_softmax_matches_unstable_formula_on_small_logits() -> None:
    y, x = _inputs("softmax", 2, torch.float64)
    y = y / 10
    e = y.exp()
    ref = e * upsample_blocks(x / block_mean(e, (2, 2)), (2, 2))
    torch.testing.assert_close(SoftmaxConstraint()(y, x), ref)


@pytest.mark.parametrize("scale", [30.0, 100.0, 1000.0])
def test_softmax_stable_and_non_negative_for_huge_logits(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    y = scale * torch.randn(2, 1, 8, 8, generator=g)
    x = torch.rand(2, 1, 2, 2, generator=g)
    x[0, 0, 0, 0] = 0.0
    out = SoftmaxConstraint()(y, x)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert torch.equal(out[0, 0, :4, :4], torch.zeros(4, 4))
    torch.testing.assert_close(F.avg_pool2d(out, 4), x, rtol=1e-6, atol=1e-6)


def test_softmax_negative_input_error_and_option() -> None:
    y = torch.randn(1, 1, 4, 4)
    x = -torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="allow_negative=True"):
        SoftmaxConstraint()(y, x)
    out = SoftmaxConstraint(allow_negative=True)(y, x)
    assert (out < 0).all()
    torch.testing.assert_close(F.avg_pool2d(out, 2), x)


def test_scadd_keeps_unit_interval() -> None:
    g = torch.Generator().manual_seed(2)
    y = 2 * torch.rand(4, 2, 16, 16, generator=g) - 1
    x = 2 * torch.rand(4, 2, 4, 4, generator=g) - 1
    out = ScaledAdditiveConstraint()(y, x)
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    # the additive layer leaves [-1, 1] on the same data, so the check above is meaningful
    add = AdditiveConstraint()(y, x)
    assert add.abs().max() > 1


def test_mult_keeps_positivity_and_falls_back_for_zero_mean_blocks() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.rand(1, 1, 4, 4, generator=g) + 0.01
    x = torch.rand(1, 1, 2, 2, generator=g)
    out = MultiplicativeConstraint()(y, x)
    assert (out >= 0).all()
    y0 = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])
    x0 = torch.tensor([[[[0.5]]]])
    out0 = MultiplicativeConstraint()(y0, x0)
    assert torch.equal(out0, y0 + 0.5)


def test_scadd_fallback_outside_domain_is_finite_and_exact() -> None:
    # block mean -1 and x below it: sign +1, denominator 0 -> additive fallback
    y = -torch.ones(1, 1, 2, 2)
    x = torch.full((1, 1, 1, 1), -3.0)
    out = ScaledAdditiveConstraint()(y, x)
    assert torch.equal(out, torch.full((1, 1, 2, 2), -3.0))


def test_invariances() -> None:
    y, x = _inputs("mult", 4, torch.float64)
    shift = upsample_blocks(torch.randn(2, 3, 3, 3, dtype=torch.float64), (4, 4))
    scale = upsample_blocks(torch.rand(2, 3, 3, 3, dtype=torch.float64) + 0.5, (4, 4))
    torch.testing.assert_close(AdditiveConstraint()(y + shift, x), AdditiveConstraint()(y, x))
    torch.testing.assert_close(SoftmaxConstraint()(y + shift, x), SoftmaxConstraint()(y, x))
    mult = MultiplicativeConstraint()
    torch.testing.assert_close(mult(y * scale, x), mult(y, x))


@pytest.mark.parametrize("name", ["add", "mult", "softmax", "scadd"])
def test_gradcheck(name: str) -> None:
    y, x = _inputs(name, 2, torch.float64)
    y = y[:1, :1, :4, :4].clone().requires_grad_(True)
    x = x[:1, :1, :2, :2].clone().requires_grad_(True)
    if name == "softmax":
        y = (y / 10).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(build_constraint(name), (y, x))


def test_build_constraint_names_and_errors() -> None:
    assert build_constraint("none") is None
    assert isinstance(build_constraint("add"), AdditiveConstraint)
    assert isinstance(build_constraint("mult"), MultiplicativeConstraint)
    assert isinstance(build_constraint("softmax"), SoftmaxConstraint)
    assert isinstance(build_constraint("scadd"), ScaledAdditiveConstraint)
    with pytest.raises(ValueError, match="choose one of"):
        build_constraint("smcl")  # type: ignore[arg-type]


def test_shape_errors() -> None:
    layer = AdditiveConstraint()
    with pytest.raises(ValueError, match="integer multiple"):
        layer(torch.zeros(1, 1, 9, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="out_channels"):
        layer(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        layer(torch.zeros(1, 8, 8), torch.zeros(1, 4, 4))


def test_layers_have_no_parameters_or_device_state() -> None:
    for name in ["add", "mult", "softmax", "scadd"]:
        layer = build_constraint(name)
        assert list(layer.parameters()) == [] and list(layer.buffers()) == []
