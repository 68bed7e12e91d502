"""Relative L2 error, the per-sample metric of the neural-operator literature."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["RelativeL2Error", "relative_l2_error"]


def _relative_l2_update(preds: Tensor, target: Tensor) -> tuple[Tensor, int]:
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}."
        )
    if preds.ndim < 2:
        raise ValueError("inputs must have a batch dimension and at least one more: (B, ...).")
    diff = (preds - target).flatten(1).double()
    ref = target.flatten(1).double()
    per_sample = diff.norm(dim=1) / ref.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return per_sample.sum(), per_sample.numel()


def relative_l2_error(preds: Tensor, target: Tensor) -> Tensor:
    r"""Mean over samples of :math:`\|\hat y_i - y_i\|_2 / \|y_i\|_2` (each sample flattened)."""
    total, count = _relative_l2_update(preds, target)
    return (total / count).to(preds.dtype)


class RelativeL2Error(Metric):
    r"""Mean per-sample relative L2 error :math:`\frac1N\sum_i \|\hat y_i - y_i\|_2/\|y_i\|_2`.

    The states are a sum and a count, so the value is exact under DDP. Unlike neuraloperator's
    ``LpLoss`` (summed over the batch by default), it does not depend on the batch size.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the per-sample errors of a batch (B, ...) to the running sum."""
        total, count = _relative_l2_update(preds, target)
        self.total += total
        self.count += count

    def compute(self) -> Tensor:
        """Mean relative error over every sample seen."""
        return (self.total / self.count).float()
