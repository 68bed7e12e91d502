import math

import pytest
import torch

from lightning_climate.models import Interpolation, fourier_resize
from lightning_climate.models.interpolation import resize, target_size


def band_limited(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An analytic periodic field with modes up to |k|=8 (including the Nyquist mode of a 16² grid)."""
    x = torch.arange(n, dtype=dtype) / n
    gx, gy = torch.meshgrid(x, x, indexing="ij")
    two_pi = 2 * math.pi
    return (
        torch.sin(two_pi * (3 * gx + 2 * gy))
        + 0.5 * torch.cos(two_pi * (7 * gx - 5 * gy))
        + 0.3 * torch.cos(two_pi * 8 * gx)
        + 0.2 * torch.cos(two_pi * 8 * gy)
        + 1.5
    )[None, None]


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(16, 32), (16, 48), (16, 64), (16, 24), (17, 34), (32, 16)]
)
def test_fourier_resize_reproduces_band_limited_field(n_in: int, n_out: int) -> None:
    out = fourier_resize(band_limited(n_in), (n_out, n_out))
    assert torch.allclose(out, band_limited(n_out), atol=1e-12)


def test_fourier_resize_float32_and_mean() -> None:
    field = band_limited(16, torch.float32)
    out = fourier_resize(field, (64, 64))
    assert out.dtype == torch.float32
    assert (out - band_limited(64, torch.float32)).abs().max() < 1e-5
    rough = torch.randn(3, 2, 20, 20, dtype=torch.float64)
    assert torch.allclose(fourier_resize(rough, (50, 30)).mean((-2, -1)), rough.mean((-2, -1)))


def test_neuraloperator_in_layer_upsampling_is_wrong_and_ours_is_exact() -> None:
    """neuraloperator 2.0.0's SpectralConv(output_shape=...) scrambles band-limited fields (notes §4.3).

    With all weights 1 the layer is the identity on its 16 modes, so upsampling a 16² band-limited
    field should give the analytic field on 32². If this starts failing because the error vanished,
    upstream has fixed the bug.
    """
    from neuralop.layers.spectral_convolution import SpectralConv

    conv = SpectralConv(1, 1, n_modes=(16, 16), bias=False)
    with torch.no_grad():
        for param in conv.parameters():
            param.fill_(1.0)
    field = band_limited(16, torch.float32) - 1.5
    ref = band_limited(32, torch.float32) - 1.5
    assert torch.allclose(conv(field), field, atol=1e-5)  # identity on the same grid
    upsampled = conv(field, output_shape=(32, 32))
    rel = ((upsampled - ref).norm() / ref.norm()).item()
    assert rel > 0.5
    ours = fourier_resize(field, (32, 32))
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-6


def test_target_size_and_errors() -> None:
    assert target_size((16, 20), 2) == (32, 40)
    assert target_size((16, 16), 1.5) == (24, 24)
    with pytest.raises(ValueError, match="not a whole number"):
        target_size((15, 15), 1.5)
    with pytest.raises(ValueError, match="unknown interpolation mode"):
        resize(torch.zeros(1, 1, 4, 4), (8, 8), "spline")  # type: ignore[arg-type]


def test_interpolation_baseline_matches_torch() -> None:
    x = torch.randn(2, 3, 8, 8)
    expected = torch.nn.functional.interpolate(
        x, size=(16, 16), mode="bicubic", align_corners=False
    )
    assert torch.equal(Interpolation("bicubic")(x, 2), expected)
    assert torch.equal(
        Interpolation("nearest")(x, 3), x.repeat_interleave(3, -1).repeat_interleave(3, -2)
    )
