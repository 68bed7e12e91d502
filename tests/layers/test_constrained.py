from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_climate.layers import ConstrainedModel
from lightning_climate.models import DFNO


class _Upsample(nn.Module):
    """A model called as model(x, factor), like DFNO and SRCNN."""

    def forward(self, x: Tensor, factor: int = 2) -> Tensor:
        return F.interpolate(x, scale_factor=factor, mode="bicubic") + 0.3


def test_wraps_any_model_and_conserves() -> None:
    x = torch.rand(2, 3, 5, 5)
    raw = _Upsample()(x, 3)
    assert (F.avg_pool2d(raw, 3) - x).abs().max() > 0.1
    for name in ("add", "mult", "softmax", "scadd"):
        out = ConstrainedModel(_Upsample(), name)(x, 3)
        torch.testing.assert_close(F.avg_pool2d(out, 3), x, rtol=0, atol=1e-6)
    assert torch.equal(ConstrainedModel(_Upsample(), "none")(x, 3), raw)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_dfno_with_softmax_conserves_at_every_factor(factor: int) -> None:
    torch.manual_seed(0)
    model = ConstrainedModel(DFNO(1, hidden_channels=8, num_residual_blocks=1, n_modes=(4, 4)))
    x = torch.rand(2, 1, 8, 8)
    out = model(x, factor)
    assert out.shape == (2, 1, 8 * factor, 8 * factor) and (out >= 0).all()
    if factor == 1:
        assert torch.equal(out, x)
    torch.testing.assert_close(F.avg_pool2d(out, factor), x, rtol=0, atol=1e-6)


def test_allow_negative_option() -> None:
    x = -torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="allow_negative=True"):
        ConstrainedModel(_Upsample())(x)
    out = ConstrainedModel(_Upsample(), allow_negative=True)(x)
    torch.testing.assert_close(F.avg_pool2d(out, 2), x, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="only applies to constraint='softmax'"):
        ConstrainedModel(_Upsample(), "add", allow_negative=True)
