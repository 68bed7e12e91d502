"""Wrap any super-resolution model so that its output ends with a constraint layer."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_climate.layers.constraints import ConstraintName, build_constraint

__all__ = ["ConstrainedModel"]


class ConstrainedModel(nn.Module):
    """``constraint(model(x, *args), x)``: a hard conservation layer after an existing model.

    Lets a model that has no constraint option (or a user's own model) be constrained from YAML,
    e.g. ``model: {class_path: ConstrainedModel, init_args: {model: {...}, constraint: softmax}}``.
    The layer uses the factor of the current call (inferred from the shapes), so models called at
    several factors, such as DFNO, stay constrained at each of them.

    Args:
        model: module called as ``model(x, *args, **kwargs)`` returning (B, C, H, W).
        constraint: ``"none"``, ``"add"``, ``"mult"``, ``"softmax"`` or ``"scadd"``, or a layer
            called as ``layer(y, x)`` such as
            :class:`~lightning_climate.layers.OrderingConstraint` (YAML: ``class_path``).
        allow_negative: for ``"softmax"`` only: accept negative inputs instead of raising (useful
            when min-max normalised test data fall slightly below the training minimum).
        check_finite: raise when the model's output, the input or the constrained output holds
            NaN or Inf, naming the layer (one device sync per call).
    """

    def __init__(
        self,
        model: nn.Module,
        constraint: ConstraintName | nn.Module = "softmax",
        allow_negative: bool = False,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if allow_negative and constraint != "softmax":
            raise ValueError("allow_negative only applies to constraint='softmax'.")
        if check_finite and constraint == "none":
            raise ValueError("check_finite needs a constraint layer; choose constraint != 'none'.")
        self.model = model
        if isinstance(constraint, nn.Module):
            self.constraint_name = type(constraint).__name__
            self.constraint: nn.Module | None = constraint
        else:
            self.constraint_name = constraint
            kwargs = {"allow_negative": True} if allow_negative else {}
            self.constraint = build_constraint(constraint, check_finite=check_finite, **kwargs)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Run the model on ``x`` and constrain its output to the block means of ``x``."""
        y = self.model(x, *args, **kwargs)
        return y if self.constraint is None else self.constraint(y, x)
