"""Conservation-constraint violation of a super-resolution prediction, exact under DDP."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_climate.layers.constraints import block_mean, infer_factor

__all__ = ["ConstraintViolation"]


class ConstraintViolation(Metric):
    """Mean or max of ``|block_mean(pred) - lowres|`` over every low-resolution pixel seen.

    This is Harder et al.'s "mass violation": zero for a model ending in a conservation layer, and
    for data whose low-resolution field is the block mean of the high-resolution one. The states
    are a sum and a count (sum-reduced) and a maximum (max-reduced), so the result under DDP equals
    the single-process result over the same samples. Both are always tracked; ``reduction`` picks
    what :meth:`compute` returns. Evaluate in physical units (after de-normalising) to compare with
    the paper.

    Args:
        reduction: ``"mean"`` (mean absolute violation) or ``"max"`` (largest absolute violation).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sum_abs: Tensor
    count: Tensor
    max_abs: Tensor

    def __init__(self, reduction: Literal["mean", "max"] = "mean", **kwargs: object) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "max"):
            raise ValueError(f"reduction must be 'mean' or 'max', got {reduction!r}.")
        self.reduction = reduction
        self.add_state("sum_abs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("max_abs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, pred: Tensor, lowres: Tensor) -> None:
        """Add a batch: ``pred`` (B, C, H, W) and its low-resolution input (B, C, H/N, W/N)."""
        factor = infer_factor(pred, lowres)
        diff = (block_mean(pred.double(), factor) - lowres.double()).abs()
        if not bool(torch.isfinite(diff).all()):
            raise ValueError(
                "ConstraintViolation got NaN or infinite values in pred or lowres; check the "
                "model output and the data (e.g. with torch.isfinite) before updating."
            )
        self.sum_abs += diff.sum()
        self.count += diff.numel()
        self.max_abs = torch.maximum(self.max_abs, diff.max())

    def compute(self) -> Tensor:
        """Return the mean or the max absolute violation (0 if nothing was seen)."""
        if self.reduction == "max":
            return self.max_abs
        return self.sum_abs / self.count.clamp_min(1)
