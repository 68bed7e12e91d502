from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_climate.losses import SoftConstraintLoss, soft_constraint_loss


def _data():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 1, 8, 8, generator=g),
        torch.randn(2, 1, 8, 8, generator=g),
        torch.randn(2, 1, 2, 2, generator=g),
    )


def test_alpha_limits() -> None:
    pred, target, lr = _data()
    torch.testing.assert_close(
        soft_constraint_loss(pred, target, lr, 0.0), F.mse_loss(pred, target)
    )
    torch.testing.assert_close(
        soft_constraint_loss(pred, target, lr, 1.0), F.mse_loss(F.avg_pool2d(pred, 4), lr)
    )


def test_module_matches_weighted_sum() -> None:
    pred, target, lr = _data()
    expected = (
        0.01 * ((pred - target) ** 2).mean()
        + 0.99 * ((pred.reshape(2, 1, 2, 4, 2, 4).mean(dim=(3, 5)) - lr) ** 2).mean()
    )
    torch.testing.assert_close(SoftConstraintLoss()(pred, target, lr), expected)


def test_zero_penalty_when_pred_is_conservative() -> None:
    pred, _, _ = _data()
    lr = F.avg_pool2d(pred, 4)
    assert SoftConstraintLoss(alpha=1.0)(pred, pred + 1, lr) == 0


def test_errors() -> None:
    pred, target, lr = _data()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        SoftConstraintLoss(alpha=1.5)
    with pytest.raises(ValueError, match="same shape"):
        soft_constraint_loss(pred, target[:, :, :4], lr, 0.5)
