"""Functional dimension of ReLU networks (Grigsby, Lindsey, Rolnick, "Hidden Symmetries of ReLU Networks").

The *batch functional dimension* at parameters ``theta`` over points ``z_1..z_m`` is the rank of the
Jacobian ``d F_theta(z_i) / d theta`` (all outputs of all points stacked as rows, all parameters as
columns). It is a lower bound of the functional dimension that never decreases when points are added.
Positive rescaling of each hidden neuron (channel, for convolutions) is a symmetry, so for ReLU
networks it never exceeds ``number of parameters - number of hidden neurons``; parameters reaching
that bound have no hidden symmetries. Dead neurons (never active on the points) and stably active
ones lower the rank; both are counted on the same points.

Supported networks are :class:`~torch.nn.Sequential` stacks (nested allowed) of ``Linear``,
``Conv1d``/``Conv2d``, ``ReLU``, ``Flatten``, ``MaxPool``/``AvgPool`` and ``Identity``/``Dropout``;
anything else (normalisation layers, other activations, residual blocks) changes the symmetry
group and is refused.

Numerical tolerance: the Jacobian is built in float64 with :mod:`torch.func`. ``method="svd"``
counts singular values above ``sigma_max * max(rows, cols) * eps64`` (NumPy's ``matrix_rank``
default). ``method="gram"`` accumulates ``J^T J`` (memory ``D x D`` instead of ``rows x D``) and
counts eigenvalues above ``lambda_max * D * eps64``, i.e. singular values above
``sigma_max * sqrt(D * eps64)`` (about ``1e-7 sigma_max`` for ``D = 1000``): directions weaker than
that are reported as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

__all__ = [
    "FunctionalDimensionResult",
    "check_relu_network",
    "functional_dimension",
    "hidden_neuron_count",
    "rank_vs_points",
    "symmetry_bound",
]

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PASSIVE = (
    nn.ReLU,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.Identity,
    nn.Dropout,
)


@dataclass
class FunctionalDimensionResult:
    """Rank of the parameter Jacobian and what explains its gap to the symmetry bound."""

    rank: int
    bound: int
    num_parameters: int
    num_points: int
    num_rows: int
    tolerance: float
    dead: int
    always_active: int
    singular_values: Tensor = field(repr=False)

    @property
    def gap(self) -> int:
        """How far the rank is below the bound (0: no hidden symmetries found)."""
        return self.bound - self.rank


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"Functional dimension supports nn.Sequential ReLU networks, got "
            f"{type(model).__name__}; pass the Sequential part of the model (the callback's "
            "`submodule` argument)."
        )
    out = []
    for name, module in model.named_children():
        if isinstance(module, nn.Sequential):
            out += [(f"{name}.{n}", m) for n, m in _layers(module)]
        else:
            out.append((name, module))
    return out


def check_relu_network(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Flattened layers of ``model`` after checking every one is supported.

    Raises:
        TypeError: naming the first unsupported layer and what is supported.
    """
    layers = _layers(model)
    for name, module in layers:
        if not isinstance(module, _LINEAR + _PASSIVE):
            raise TypeError(
                f"Layer '{name}' ({type(module).__name__}) is not supported by the functional "
                "dimension: its symmetries differ from ReLU rescaling. Supported: Linear, "
                "Conv1d, Conv2d, ReLU, Flatten, MaxPool, AvgPool, Identity, Dropout in nn.Sequential."
            )
        if isinstance(module, nn.ReLU | nn.Dropout) and getattr(module, "inplace", False):
            raise TypeError(f"Layer '{name}' is in-place; use inplace=False for torch.func.")
    if not any(isinstance(m, _LINEAR) for _, m in layers):
        raise TypeError("The network has no Linear or Conv layer; nothing to differentiate.")
    return layers


def hidden_neuron_count(model: nn.Module) -> int:
    """Hidden neurons with a rescaling symmetry: outputs of every affine layer except the last.

    For convolutions a "neuron" is an output channel (its kernel and bias rescale together).
    """
    affine = [m for _, m in check_relu_network(model) if isinstance(m, _LINEAR)]
    return sum(m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in affine[:-1])


def symmetry_bound(model: nn.Module) -> int:
    """``number of parameters - number of hidden neurons``: the rank that no ReLU net exceeds."""
    return sum(p.numel() for p in model.parameters()) - hidden_neuron_count(model)


def _float64_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    buffers = {n: b.double() for n, b in model.named_buffers()}
    return params, buffers


def _jacobian_blocks(model: nn.Module, points: Tensor, chunk_size: int) -> list[Tensor]:
    """Rows of the float64 parameter Jacobian, ``chunk_size`` points at a time."""
    params, buffers = _float64_state(model)

    def output(p: dict[str, Tensor], z: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (z.unsqueeze(0),)).flatten()

    jac_one = jacrev(output)
    blocks = []
    for start in range(0, len(points), chunk_size):
        z = points[start : start + chunk_size].double()
        jac = vmap(jac_one, in_dims=(None, 0))(params, z)
        # (points, outputs, *param shape) -> (points * outputs, D), columns in parameter order
        rows = torch.cat([jac[n].flatten(2) for n in params], dim=2)
        blocks.append(rows.flatten(0, 1))
    return blocks


def _activation_counts(model: nn.Module, points: Tensor) -> tuple[int, int]:
    """Dead (never positive) and always-active (always positive) ReLU units on ``points``."""
    pre: list[Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, args, _out: pre.append(args[0].detach()))
        for _, m in check_relu_network(model)
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.no_grad():
            functional_call(model, _float64_state(model), (points.double(),))
    finally:
        for h in handles:
            h.remove()
    dead = sum(int((x <= 0).flatten(1).all(0).sum()) for x in pre)
    active = sum(int((x > 0).flatten(1).all(0).sum()) for x in pre)
    return dead, active


def functional_dimension(
    model: nn.Module,
    points: Tensor,
    method: Literal["svd", "gram"] = "svd",
    chunk_size: int = 256,
) -> FunctionalDimensionResult:
    """Batch functional dimension of a ReLU network at its current parameters.

    Args:
        model: supported :class:`~torch.nn.Sequential` ReLU network (see module docstring); its
            dtype and device are kept, the Jacobian is computed in float64 on a copy of the weights.
        points: ``(m, ...)`` input points (e.g. ``torch.randn(m, n0)``).
        method: ``"svd"`` (exact tolerance, memory ``m * outputs * D``) or ``"gram"`` (memory
            ``D * D``, looser tolerance); see the module docstring.
        chunk_size: points per vectorised Jacobian block.

    Returns:
        The rank with the bound, the tolerance used, the singular values and the dead/always-active
        neuron counts on the same points.
    """
    check_relu_network(model)
    was_training = model.training
    model.eval()  # dropout off; no other supported layer depends on the mode
    try:
        blocks = _jacobian_blocks(model, points, chunk_size)
        dead, active = _activation_counts(model, points)
    finally:
        model.train(was_training)
    num_params = sum(p.numel() for p in model.parameters())
    num_rows = sum(len(b) for b in blocks)
    eps = torch.finfo(torch.float64).eps
    if method == "svd":
        sv = torch.linalg.svdvals(torch.cat(blocks))
        tol = (
            float(sv.max()) * max(sum(len(b) for b in blocks), num_params) * eps if len(sv) else 0.0
        )
    elif method == "gram":
        gram = sum(b.T @ b for b in blocks)
        assert isinstance(gram, Tensor)
        eig = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
        sv = eig.sqrt()
        tol = float(sv.max()) * math.sqrt(num_params * eps)
    else:
        raise ValueError(f"method must be 'svd' or 'gram', got {method!r}.")
    return FunctionalDimensionResult(
        rank=int((sv > tol).sum()),
        bound=symmetry_bound(model),
        num_parameters=num_params,
        num_points=len(points),
        num_rows=num_rows,
        tolerance=tol,
        dead=dead,
        always_active=active,
        singular_values=sv,
    )


def rank_vs_points(
    model: nn.Module, points: Tensor, counts: list[int], method: Literal["svd", "gram"] = "svd"
) -> list[int]:
    """Batch functional dimension on the first ``c`` points for each ``c`` in ``counts``.

    The point sets are nested, so the ranks are non-decreasing in ``c`` (up to the tolerance).
    """
    if any(not 1 <= c <= len(points) for c in counts):
        raise ValueError(f"counts must lie in [1, {len(points)}], got {counts}.")
    return [functional_dimension(model, points[:c], method=method).rank for c in counts]
