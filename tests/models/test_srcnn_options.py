"""SRCNN's periodic padding and global residual (the options of the Navier–Stokes baseline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_climate.models import SRCNN


def _model(**kwargs: object) -> SRCNN:
    torch.manual_seed(0)
    return SRCNN(factor=2, hidden_channels=8, num_residual_blocks=2, **kwargs).double()


@pytest.mark.parametrize("residual", [None, "bicubic"])
def test_circular_padding_commutes_with_periodic_shifts(residual: str | None) -> None:
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(3, -2), dims=(-2, -1))
    circular = _model(padding_mode="circular", residual=residual)
    torch.testing.assert_close(
        circular(shifted), torch.roll(circular(x), shifts=(6, -4), dims=(-2, -1))
    )
    # zero padding breaks the symmetry at the borders (so the check above is not vacuous)
    zeros = _model()
    gap = zeros(shifted) - torch.roll(zeros(x), shifts=(6, -4), dims=(-2, -1))
    assert gap.abs().max() > 1e-3


def test_residual_adds_the_interpolated_input() -> None:
    model = _model(residual="bicubic")
    last = model.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    expected = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model(x), expected)
    # at another factor the whole output is resampled, as without the residual
    assert model(x, 4).shape == (2, 1, 32, 32)


def test_periodic_residual_equals_bicubic_of_the_tiled_field() -> None:
    model = _model(padding_mode="circular", residual="bicubic")
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.zeros_(model.body[-1].bias)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    tiled = F.interpolate(x.repeat(1, 1, 3, 3), scale_factor=2, mode="bicubic")
    torch.testing.assert_close(model(x), tiled[..., 16:32, 16:32])


def test_option_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="use 'circular' for periodic fields"):
        SRCNN(padding_mode="periodic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out_channels .* must equal in_channels"):
        SRCNN(in_channels=2, out_channels=1, residual="bicubic")
