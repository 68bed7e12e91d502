"""OC20 evaluation metrics as torchmetrics: energy MAE, EwT, force MAE, force cosine, EFwT.

Definitions follow fairchem's evaluator: EwT is the fraction of systems with
``|E_pred - E| < 0.02 eV`` (strict), force metrics are computed on free atoms only
(``force_mask``, e.g. ``~fixed``), and EFwT counts a system as a success when its energy error is
below 0.02 eV **and** the largest absolute force-component error over its free atoms is below
0.03 eV/Å. Every state is a sum or a count, so the result is exact under DDP.

All ``update`` methods take keyword arguments with the same names (``energy_pred``,
``energy_target``, ``force_pred``, ``force_target``, ``force_mask``, ``batch``) so one
:class:`~torchmetrics.MetricCollection` can be updated with all of them at once.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter
from torchmetrics import Metric

__all__ = [
    "EnergyForceWithinThreshold",
    "EnergyMAE",
    "EnergyWithinThreshold",
    "ForceCosineSimilarity",
    "ForceMAE",
]


def _check_same(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ."
        )


def _free(
    force_pred: Tensor, force_target: Tensor, force_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    _check_same(force_pred, force_target, "forces")
    if force_pred.ndim != 2 or force_pred.shape[1] != 3:
        raise ValueError(f"forces must be (N, 3), got {tuple(force_pred.shape)}.")
    if force_mask is None:
        return force_pred, force_target
    return force_pred[force_mask], force_target[force_mask]


class EnergyMAE(Metric):
    """Mean absolute energy error over systems (eV)."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "sum_abs_error", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, energy_pred: Tensor, energy_target: Tensor) -> None:
        """Accumulate the absolute errors of a batch of systems."""
        _check_same(energy_pred, energy_target, "energy")
        self.sum_abs_error += (energy_pred.detach() - energy_target).abs().sum().double()
        self.total += energy_target.numel()

    def compute(self) -> Tensor:
        """Mean absolute error."""
        return (self.sum_abs_error / self.total).float()


class EnergyWithinThreshold(Metric):
    """Fraction of systems whose energy error is strictly below ``threshold`` (OC20's EwT).

    Args:
        threshold: energy threshold in eV (OC20: 0.02).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.02, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if threshold <= 0:
            raise ValueError(f"threshold must be positive (eV), got {threshold}.")
        self.threshold = threshold
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, energy_pred: Tensor, energy_target: Tensor) -> None:
        """Count the systems of a batch within the threshold."""
        _check_same(energy_pred, energy_target, "energy")
        self.hits += ((energy_pred.detach() - energy_target).abs() < self.threshold).sum()
        self.total += energy_target.numel()

    def compute(self) -> Tensor:
        """Fraction of systems within the threshold."""
        return self.hits.float() / self.total


class ForceMAE(Metric):
    """Mean absolute force-component error over free atoms (eV/Å)."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "sum_abs_error", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, force_pred: Tensor, force_target: Tensor, force_mask: Tensor | None = None
    ) -> None:
        """Accumulate the component errors of the free atoms of a batch."""
        pred, target = _free(force_pred, force_target, force_mask)
        self.sum_abs_error += (pred.detach() - target).abs().sum().double()
        self.total += target.numel()

    def compute(self) -> Tensor:
        """Mean absolute component error."""
        return (self.sum_abs_error / self.total).float()


class ForceCosineSimilarity(Metric):
    """Mean cosine similarity between predicted and true forces of free atoms."""

    is_differentiable = True
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_cosine", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, force_pred: Tensor, force_target: Tensor, force_mask: Tensor | None = None
    ) -> None:
        """Accumulate the per-atom cosines of the free atoms of a batch."""
        pred, target = _free(force_pred, force_target, force_mask)
        cosine = torch.nn.functional.cosine_similarity(pred.detach(), target, dim=-1)
        self.sum_cosine += cosine.sum().double()
        self.total += target.shape[0]

    def compute(self) -> Tensor:
        """Mean cosine similarity."""
        return (self.sum_cosine / self.total).float()


class EnergyForceWithinThreshold(Metric):
    """OC20's EFwT: systems with energy error < 0.02 eV and every free force component < 0.03 eV/Å.

    Args:
        energy_threshold: eV.
        force_threshold: eV/Å, applied to the largest absolute component error of a system.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, energy_threshold: float = 0.02, force_threshold: float = 0.03, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        if energy_threshold <= 0 or force_threshold <= 0:
            raise ValueError("energy_threshold and force_threshold must be positive.")
        self.energy_threshold = energy_threshold
        self.force_threshold = force_threshold
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        energy_pred: Tensor,
        energy_target: Tensor,
        force_pred: Tensor,
        force_target: Tensor,
        batch: Tensor,
        force_mask: Tensor | None = None,
    ) -> None:
        """Count the systems of a batch meeting both thresholds."""
        _check_same(energy_pred, energy_target, "energy")
        _check_same(force_pred, force_target, "forces")
        error = (force_pred.detach() - force_target).abs().amax(dim=-1)
        if force_mask is not None:
            error = torch.where(force_mask, error, torch.zeros_like(error))
        worst = scatter(error, batch, dim=0, dim_size=energy_target.numel(), reduce="max")
        energy_ok = (energy_pred.detach() - energy_target).abs() < self.energy_threshold
        self.hits += (energy_ok & (worst < self.force_threshold)).sum()
        self.total += energy_target.numel()

    def compute(self) -> Tensor:
        """Fraction of systems meeting both thresholds."""
        return self.hits.float() / self.total
