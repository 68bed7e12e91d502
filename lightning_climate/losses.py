"""Loss terms shared by tasks: the soft conservation constraint of Harder et al. (2023)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_climate.layers.constraints import block_mean, infer_factor

__all__ = ["SoftConstraintLoss", "soft_constraint_loss"]


def soft_constraint_loss(pred: Tensor, target: Tensor, lowres: Tensor, alpha: float) -> Tensor:
    """``(1 - alpha) * MSE(pred, target) + alpha * MSE(block_mean(pred), lowres)``.

    The penalty pulls the block means of ``pred`` towards the low-resolution input without
    guaranteeing them, so hard (layer) and soft (loss) constraints compare on the same task.

    Args:
        pred: high-resolution prediction (B, C, H, W).
        target: high-resolution truth, same shape as ``pred``.
        lowres: low-resolution input (B, C, H/N, W/N).
        alpha: weight of the constraint term in [0, 1]; Harder et al. use 0.99.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape."
        )
    factor = infer_factor(pred, lowres)
    fit = F.mse_loss(pred, target)
    penalty = F.mse_loss(block_mean(pred, factor), lowres)
    return (1.0 - alpha) * fit + alpha * penalty


class SoftConstraintLoss(nn.Module):
    """Module form of :func:`soft_constraint_loss`, settable from YAML.

    Args:
        alpha: weight of the constraint term in [0, 1] (default 0.99, as in Harder et al.).
    """

    def __init__(self, alpha: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.alpha = alpha

    def forward(self, pred: Tensor, target: Tensor, lowres: Tensor) -> Tensor:
        """Return the weighted sum of the data misfit and the conservation penalty."""
        return soft_constraint_loss(pred, target, lowres, self.alpha)
