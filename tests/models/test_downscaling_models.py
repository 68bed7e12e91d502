import pytest
import torch

from lightning_climate.models import DFNO, SRCNN


@pytest.fixture
def dfno() -> DFNO:
    torch.manual_seed(0)
    return DFNO(in_channels=2, hidden_channels=8, num_residual_blocks=1, n_modes=(8, 8))


@pytest.mark.parametrize(("factor", "size"), [(1, 12), (2, 24), (3, 36), (4, 48), (1.5, 18)])
def test_dfno_any_factor(dfno: DFNO, factor: float, size: int) -> None:
    out = dfno(torch.randn(3, 2, 12, 12), factor)
    assert out.shape == (3, 2, size, size)
    assert torch.isfinite(out).all()


def test_dfno_parameters_do_not_depend_on_factor(dfno: DFNO) -> None:
    count = sum(p.numel() for p in dfno.parameters())
    x = torch.randn(1, 2, 8, 8)
    for factor in (1, 2, 4):
        dfno.zero_grad()
        dfno(x, factor).square().mean().backward()
        assert sum(p.numel() for p in dfno.parameters() if p.grad is not None) == count


def test_dfno_output_is_interpolation_plus_learned_correction() -> None:
    torch.manual_seed(0)
    model = DFNO(
        in_channels=1,
        hidden_channels=4,
        num_residual_blocks=1,
        n_modes=(4, 4),
        interpolation="fourier",
    )
    for layer in model.projection:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float32)
    from lightning_climate.models import fourier_resize

    assert torch.allclose(model(x, 2), fourier_resize(x, (16, 16)), atol=1e-6)


def test_dfno_bad_input(dfno: DFNO) -> None:
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 2, h, w\)"):
        dfno(torch.randn(1, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="not a whole number"):
        dfno(torch.randn(1, 2, 9, 9), 1.5)
    with pytest.raises(ValueError, match="n_modes"):
        DFNO(n_modes=(8,))


@pytest.mark.parametrize("factor", [1, 2, 4, 3])
def test_srcnn_factors(factor: int) -> None:
    model = SRCNN(in_channels=1, factor=factor, hidden_channels=4, num_residual_blocks=1)
    assert model(torch.randn(2, 1, 6, 6)).shape == (2, 1, 6 * factor, 6 * factor)


def test_srcnn_off_factor_resamples_its_own_output() -> None:
    torch.manual_seed(0)
    model = SRCNN(in_channels=1, factor=2, hidden_channels=4, num_residual_blocks=1)
    x = torch.randn(2, 1, 6, 6)
    own = model(x)
    expected = torch.nn.functional.interpolate(
        own, size=(24, 24), mode="bicubic", align_corners=False
    )
    assert torch.allclose(model(x, 4), expected)
    with pytest.raises(ValueError, match="factors 1, 2, 4, 8"):
        SRCNN(factor=5)
