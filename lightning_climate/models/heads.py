"""PhAST energy and force heads, shared by every catalyst backbone.

Energy heads turn per-atom representations into one energy per graph:

- ``sum`` (SchNet's readout) and ``mean`` of per-atom energies ``e_i = MLP(h_i)``;
- ``weighted_initial`` / ``weighted_final``: PhAST's learned weighting, ``E = sum_i a_i e_i`` with
  ``a_i = Linear(h)`` computed from the initial (embedding) or final representations. The weights
  are not normalised (it is a weighted sum, not an average), as in the reference code;
- ``pooling``: soft cluster pooling with HoscPool-style min-cut regularisers; it needs the graph
  and returns an auxiliary loss, so it is its own class,
  :class:`~lightning_climate.models.pooling.PoolingEnergyHead`.

Force heads (S2EF):

- ``gradient``: ``F = -dE/dpos`` (energy-conserving; needs ``Trainer(inference_mode=False)`` to
  evaluate);
- ``direct``: ``F_i = MLP(h_i)``, a 3-vector per atom (fast, not conservative);
- ``mixed``: the direct forces are the prediction and the gradient forces are returned as
  ``forces_gradient`` for a consistency loss (the task detaches them).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

__all__ = ["EnergyHead", "ForceHead", "gradient_forces"]

EnergyKind = Literal["sum", "mean", "weighted_initial", "weighted_final", "pooling"]
ForceKind = Literal["none", "gradient", "direct", "mixed"]


def mlp(in_channels: int, out_channels: int) -> nn.Sequential:
    """Linear - SiLU - Linear through half the input width: the per-atom (or per-cluster) readout."""
    hidden = max(in_channels // 2, 1)
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, out_channels))


class EnergyHead(nn.Module):
    """Per-graph energy from per-atom representations (see the module docstring).

    Args:
        hidden_channels: width of the atom representations.
        kind: ``sum``, ``mean``, ``weighted_initial`` or ``weighted_final`` (``pooling`` is
            :class:`~lightning_climate.models.pooling.PoolingEnergyHead`).
        initial_channels: width of the initial embeddings (``weighted_initial`` only).
    """

    def __init__(
        self, hidden_channels: int, kind: EnergyKind = "sum", initial_channels: int | None = None
    ) -> None:
        super().__init__()
        if kind == "pooling":
            raise ValueError(
                "the pooling energy head needs the graph and returns an auxiliary loss: build "
                "PoolingEnergyHead (CatalystModel does so for energy_head='pooling')."
            )
        if kind not in ("sum", "mean", "weighted_initial", "weighted_final"):
            raise ValueError(
                f"energy head must be sum, mean, weighted_initial, weighted_final or pooling "
                f"(argument energy_head), got {kind!r}; pick one of those."
            )
        self.kind = kind
        self.atom_energy = mlp(hidden_channels, 1)
        weight_in = (
            (initial_channels or hidden_channels) if kind == "weighted_initial" else hidden_channels
        )
        self.weight = nn.Linear(weight_in, 1) if kind.startswith("weighted") else None

    def forward(self, h: Tensor, h_initial: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Energies (num_graphs,) from final ``h`` and initial ``h_initial`` atom features."""
        energy = self.atom_energy(h).squeeze(-1)
        if self.weight is not None:
            source = h_initial if self.kind == "weighted_initial" else h
            energy = energy * self.weight(source).squeeze(-1)
        reduce = "mean" if self.kind == "mean" else "sum"
        return scatter(energy, batch, dim=0, dim_size=num_graphs, reduce=reduce)


def gradient_forces(energy: Tensor, pos: Tensor, create_graph: bool) -> Tensor:
    """``-dE/dpos`` summed over graphs; raises a clear error where autograd is off."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "gradient forces need autograd, but Lightning evaluates in inference mode; create the "
            "Trainer with inference_mode=False (YAML: trainer.inference_mode: false)."
        )
    (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    return -grad


class ForceHead(nn.Module):
    """Direct per-atom force decoder used by the ``direct`` and ``mixed`` force heads.

    Args:
        hidden_channels: width of the atom representations.
    """

    def __init__(self, hidden_channels: int) -> None:
        super().__init__()
        self.decoder = mlp(hidden_channels, 3)

    def forward(self, h: Tensor) -> Tensor:
        """Forces (N, 3) from atom features (N, hidden)."""
        return self.decoder(h)
