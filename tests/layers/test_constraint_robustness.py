"""Constraint layers at extreme magnitudes, with non-finite or integer inputs, and bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_climate.layers import (
    ConstrainedModel,
    MinMeanMaxConstraint,
    MultiplicativeConstraint,
    ScaledAdditiveConstraint,
    SoftmaxConstraint,
    build_constraint,
)

NAMES = ["add", "mult", "softmax", "scadd"]
MAGNITUDES = [1e-3, 1.0, 1e4, 1e8, 1e16, 1e30]


def _far_from_x(name: str, magnitude: float, dtype: torch.dtype):
    """Raw outputs whose block means are ~1000x the low-res values (an untrained or drifting model)."""
    g = torch.Generator().manual_seed(7)
    y = 1000 + torch.randn(2, 2, 12, 12, generator=g, dtype=torch.float64)
    x = torch.rand(2, 2, 3, 3, generator=g, dtype=torch.float64)
    if name == "mult":
        y = y.abs()
    if name == "softmax":
        return y.to(dtype), (magnitude * x).to(dtype)
    return (magnitude * y).to(dtype), (magnitude * x).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", NAMES)
def test_block_mean_to_float_precision_at_any_magnitude(
    name: str, magnitude: float, dtype: torch.dtype
) -> None:
    """|pool(y) - x| is a few epsilon of the block's own scale max(|x|, max |y|), in float64."""
    y, x = _far_from_x(name, magnitude, dtype)
    out = build_constraint(name)(y, x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (F.avg_pool2d(out.double(), 4) - x.double()).abs()
    scale = torch.maximum(x.double().abs(), F.max_pool2d(out.double().abs(), 4))
    assert (err / scale).max() <= 8 * torch.finfo(dtype).eps


def test_additive_no_longer_cancels_when_raw_output_dwarfs_x() -> None:
    """The reported case: raw output ~1e4 around O(1) targets. The output is O(1), so is the error."""
    g = torch.Generator().manual_seed(0)
    y = 1e4 + torch.randn(2, 3, 12, 12, generator=g)
    x = torch.rand(2, 3, 3, 3, generator=g) + 0.5
    for name in ["add", "scadd"]:
        out = build_constraint(name)(y, x)
        err = (F.avg_pool2d(out.double(), 4) - x.double()).abs() / x.double()
        assert err.max() <= 1e-6, name


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_values_stay_in_their_block(name: str) -> None:
    y, x = _far_from_x(name, 1.0, torch.float32)
    for bad in (float("nan"), float("inf")):
        y_bad = y.clone()
        y_bad[0, 0, 5, 6] = bad  # block (1, 1) of sample 0, channel 0
        out = build_constraint(name)(y_bad, x)
        assert not torch.isfinite(out[0, 0, 4:8, 4:8]).all()
        mask = torch.ones_like(out, dtype=torch.bool)
        mask[0, 0, 4:8, 4:8] = False
        torch.testing.assert_close(out[mask], build_constraint(name)(y, x)[mask])


@pytest.mark.parametrize("name", NAMES)
def test_check_finite_names_layer_and_input(name: str) -> None:
    y, x = _far_from_x(name, 1.0, torch.float32)
    layer = build_constraint(name, check_finite=True)
    cls = type(layer).__name__
    torch.testing.assert_close(layer(y, x), build_constraint(name)(y, x))
    y_bad = y.clone()
    y_bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"{cls}: the input y_highres has 1 non-finite"):
        layer(y_bad, x)
    x_bad = x.clone()
    x_bad[1, 1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=rf"{cls}: the input x_lowres has 1 non-finite"):
        layer(y, x_bad)


def test_check_finite_reports_overflow_in_output() -> None:
    """float16 finite inputs whose rescaled output overflows: named as an overflow."""
    y = torch.full((1, 1, 2, 2), 1e-3, dtype=torch.float16)
    y[0, 0, 0, 0] = 60000.0
    x = torch.full((1, 1, 1, 1), 30000.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"MultiplicativeConstraint: the output .*overflowed"):
        MultiplicativeConstraint(check_finite=True)(y, x * 2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensors_are_refused(name: str, dtype: torch.dtype) -> None:
    layer = build_constraint(name)
    y, x = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__} needs floating-point.*y_highres"):
        layer(y.to(dtype), x)
    with pytest.raises(TypeError, match=r"x_lowres has dtype .*`x_lowres.float\(\)`"):
        layer(y, x.to(dtype))


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), 0.0, -1e-6, True, "1e-6"])
@pytest.mark.parametrize("cls", [MultiplicativeConstraint, ScaledAdditiveConstraint])
def test_eps_validated_at_construction(cls: type, eps: object) -> None:
    with pytest.raises(
        ValueError, match=rf"{cls.__name__}\(eps=\.\.\.\) must be a finite positive"
    ):
        cls(eps=eps)


def test_flags_validated_at_construction() -> None:
    with pytest.raises(TypeError, match=r"SoftmaxConstraint\(allow_negative=\.\.\.\)"):
        SoftmaxConstraint(allow_negative="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AdditiveConstraint\(check_finite=\.\.\.\)"):
        build_constraint("add", check_finite=1)
    with pytest.raises(ValueError, match="check_finite needs a constraint"):
        ConstrainedModel(torch.nn.Identity(), constraint="none", check_finite=True)


def test_ordering_refuses_integers_and_checks_finite() -> None:
    layer = MinMeanMaxConstraint(check_finite=True)
    with pytest.raises(TypeError, match="MinMeanMaxConstraint needs floating-point"):
        layer(torch.ones(1, 3, 4, 4, dtype=torch.int64))
    y = torch.randn(1, 3, 4, 4)
    assert torch.equal(layer(y), MinMeanMaxConstraint()(y))
    y[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="MinMeanMaxConstraint: the input y_highres has 1"):
        layer(y)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        MinMeanMaxConstraint(check_finite=None)  # type: ignore[arg-type]


def test_constrained_model_check_finite() -> None:
    model = ConstrainedModel(torch.nn.Upsample(scale_factor=2), constraint="add", check_finite=True)
    x = torch.rand(1, 1, 3, 3)
    torch.testing.assert_close(F.avg_pool2d(model(x), 2), x)
    x[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="AdditiveConstraint: the input y_highres"):
        model(x)
