"""Multi-variable hard constraints: an order between channels, e.g. ``tasmin <= tas <= tasmax``.

After González-Abad et al. (2023), the network's output is reparameterised: one *anchor* channel
(e.g. ``tas``) is taken as it is, and every other ordered channel is read as an unconstrained gap
to its neighbour towards the anchor, made non-negative by softplus (or ReLU). Walking outwards
from the anchor, ``y[k+1] = y[k] + g(raw[k+1])`` above it and ``y[k-1] = y[k] - g(raw[k-1])``
below it. Adding a non-negative number never decreases a float, so the order holds exactly on
every output, whatever the network produced.

The layer composes with conservation (Harder et al.): with ``conservation`` set, the anchor is
constrained to its low-resolution channel by that layer, and each gap by
:class:`~lightning_climate.layers.constraints.SoftmaxConstraint` to the low-resolution gap, which
is non-negative when the low-resolution data are ordered (block means keep the order). Block means
are linear, so every ordered channel then has the block means of its own low-resolution channel.

The order must hold in the space where the layer runs: use physical units, or one affine map
shared by all ordered channels (per-channel normalisation generally breaks the order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_climate.layers.constraints import (
    ConstraintName,
    SoftmaxConstraint,
    build_constraint,
    check_inputs,
    check_output,
    infer_factor,
)

__all__ = ["MinMeanMaxConstraint", "OrderingConstraint"]


class OrderingConstraint(nn.Module):
    """Guarantee ``y[:, order[0]] <= y[:, order[1]] <= ...`` everywhere; other channels pass through.

    Args:
        order: channel indices from the smallest to the largest quantity.
        anchor: position in ``order`` of the channel that is predicted directly (default: middle).
        positive: ``"softplus"`` (smooth, gradients everywhere) or ``"relu"`` for the gaps.
        conservation: optional conservation layer name (``"add"``, ``"mult"``, ``"softmax"``,
            ``"scadd"``) applied to the anchor; the gaps then use the softmax layer (which
            replaces ``positive``), so each ordered channel has the block means of its
            low-resolution channel.
        check_finite: raise on NaN/Inf in the inputs or the output, naming this layer (one
            device sync per call); without it a non-finite value spreads along its pixel's chain.
    """

    def __init__(
        self,
        order: Sequence[int],
        anchor: int | None = None,
        positive: Literal["softplus", "relu"] = "softplus",
        conservation: ConstraintName = "none",
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        order = [int(c) for c in order]
        if len(order) < 2 or len(set(order)) != len(order) or min(order) < 0:
            raise ValueError(
                f"order must list at least two distinct non-negative channel indices, got {order}."
            )
        anchor = len(order) // 2 if anchor is None else anchor
        if not 0 <= anchor < len(order):
            raise ValueError(
                f"anchor must be a position in order (0..{len(order) - 1}), got {anchor}."
            )
        if positive not in ("softplus", "relu"):
            raise ValueError(f"positive must be 'softplus' or 'relu', got {positive!r}.")
        self.order = order
        self.anchor = anchor
        self.positive = positive
        self.conservation = conservation
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be True or False, got {check_finite!r}.")
        self.check_finite = check_finite
        self.anchor_constraint = build_constraint(conservation)
        self.gap_constraint = None if self.anchor_constraint is None else SoftmaxConstraint()

    def _gap(self, raw: Tensor) -> Tensor:
        return F.softplus(raw) if self.positive == "softplus" else F.relu(raw)

    def forward(self, y_highres: Tensor, x_lowres: Tensor | None = None) -> Tensor:
        """Return the ordered prediction (B, C, H, W).

        Args:
            y_highres: raw network output (B, C, H, W).
            x_lowres: low-resolution input (B, C, H/N, W/N); required when ``conservation`` is set.

        Raises:
            ValueError: if a channel index is out of range, ``x_lowres`` is missing although
                conservation is asked for, or ``x_lowres`` itself violates the order.
        """
        if y_highres.ndim != 4 or max(self.order) >= y_highres.shape[1]:
            raise ValueError(
                f"OrderingConstraint(order={self.order}) needs a (B, C, H, W) input with more than "
                f"{max(self.order)} channels, got shape {tuple(y_highres.shape)}."
            )
        if self.anchor_constraint is not None:
            if x_lowres is None:
                raise ValueError(
                    f"OrderingConstraint(conservation={self.conservation!r}) needs the "
                    "low-resolution input: call it as layer(y_highres, x_lowres)."
                )
            infer_factor(y_highres, x_lowres)
        layer = type(self).__name__
        check_inputs(layer, y_highres, x_lowres, self.check_finite)
        channels = list(y_highres.unbind(1))
        a = self.order[self.anchor]
        if self.anchor_constraint is not None:
            channels[a] = self.anchor_constraint(y_highres[:, a : a + 1], x_lowres[:, a : a + 1])[
                :, 0
            ]
        for step in (1, -1):
            pos = self.anchor + step
            previous = a
            while 0 <= pos < len(self.order):
                c = self.order[pos]
                raw = y_highres[:, c]
                if self.gap_constraint is None:
                    gap = self._gap(raw)
                else:
                    lo, hi = (previous, c) if step == 1 else (c, previous)
                    low_gap = x_lowres[:, hi] - x_lowres[:, lo]
                    if bool((low_gap < 0).any()):
                        raise ValueError(
                            f"the low-resolution input violates the order: channel {hi} is below "
                            f"channel {lo} somewhere (min difference {low_gap.min().item():.4g}). "
                            "Order the input data, or normalise the ordered channels with one "
                            "shared affine map instead of per-channel statistics."
                        )
                    # The softmax layer reads raw as logits: non-negative gaps with exact means.
                    gap = self.gap_constraint(raw[:, None], low_gap[:, None])[:, 0]
                channels[c] = channels[previous] + step * gap
                previous = c
                pos += step
        y = torch.stack(channels, dim=1)
        if self.check_finite:
            check_output(layer, y)
        return y


class MinMeanMaxConstraint(OrderingConstraint):
    """``tasmin <= tas <= tasmax`` with ``tas`` as the anchor (González-Abad et al. 2023).

    Args:
        tasmin: channel of the daily minimum.
        tas: channel of the daily mean (predicted directly).
        tasmax: channel of the daily maximum.
        positive: ``"softplus"`` or ``"relu"`` for the two gaps.
        conservation: optional conservation layer for ``tas`` (see :class:`OrderingConstraint`).
        check_finite: raise on NaN/Inf, naming this layer (see :class:`OrderingConstraint`).
    """

    def __init__(
        self,
        tasmin: int = 0,
        tas: int = 1,
        tasmax: int = 2,
        positive: Literal["softplus", "relu"] = "softplus",
        conservation: ConstraintName = "none",
        check_finite: bool = False,
    ) -> None:
        super().__init__([tasmin, tas, tasmax], 1, positive, conservation, check_finite)
