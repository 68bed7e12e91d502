"""Latitude-weighted RMSE on regular lat-lon grids (WeatherBench definition), exact under DDP.

Cells of a lat-lon grid shrink towards the poles by cos(latitude), so an unweighted mean
over-counts polar errors. The weights are ``w = cos(lat) / mean(cos(lat))`` on the latitude axis
only: they average to 1 and are never negative (the ClimateSet reference weighted the longitude
axis with the cosine of index "degrees" 0..143, giving negative weights; see the tests).

Convention: one global RMSE per output variable, ``sqrt(sum(w * err^2) / sum(w))`` over every
sample, time step and grid cell (the "RMSE of the pooled weighted MSE"), not the mean of
per-sample RMSEs. Its sufficient statistics ``sum(w * err^2)`` and ``sum(w)`` are sums, so the
result is identical however the samples are split across batches and processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["LatitudeWeightedRMSE", "latitude_weighted_mse", "latitude_weights"]


def latitude_weights(latitudes: Sequence[float] | Tensor) -> Tensor:
    """``cos(lat) / mean(cos(lat))`` (float64) for latitudes in degrees.

    Raises:
        ValueError: if a latitude is outside [-90, 90] (radians or a longitude axis passed by
            mistake) or every weight is zero.
    """
    cos = _cosines(torch.as_tensor(latitudes, dtype=torch.float64).flatten())
    if cos.sum() <= 0:
        raise ValueError("latitudes are all at the poles; cos(lat) weights sum to zero.")
    return cos / cos.mean()


def _cosines(latitudes: Tensor) -> Tensor:
    """``cos(lat)`` in float64, clamped at 0, after checking that ``latitudes`` are degrees."""
    lat = latitudes.to(torch.float64)
    if lat.numel() == 0 or not torch.isfinite(lat).all():
        raise ValueError("latitudes must be a non-empty sequence of finite values in degrees.")
    if (lat.abs() > 90.0).any():
        raise ValueError(
            f"latitudes must lie in [-90, 90] degrees, got min {lat.min().item():.4g} and max "
            f"{lat.max().item():.4g}. Pass the latitude coordinate in degrees, not the longitude."
        )
    return torch.cos(torch.deg2rad(lat)).clamp_min(0.0)


def latitude_weighted_mse(preds: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Differentiable weighted MSE over (..., H, W), ``weights`` of shape (H,) with mean 1."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ.")
    return ((preds - target) ** 2 * weights.to(preds)[:, None]).mean()


class LatitudeWeightedRMSE(Metric):
    """Latitude-weighted RMSE per output variable.

    Args:
        latitudes: latitude of each grid row in degrees (the grid's H axis), e.g. the ``lat``
            coordinate of the data files. ``None`` when every :meth:`update` passes the
            latitudes of its own fields (patches of a grid, or grids that differ).
        num_outputs: number of output variables. With 1, inputs are (..., H, W) and the result
            is a scalar; with C > 1, inputs are (..., C, H, W) and the result has shape (C,).

    Patches that tile a grid, each updated with its own rows' latitudes, give the RMSE of the
    whole grid: the statistics are ``sum(cos(lat) * err^2)`` and ``sum(cos(lat))`` (the constant
    normalisation of the weights cancels).

    Example:
        >>> metric = LatitudeWeightedRMSE(latitudes=[-45.0, 0.0, 45.0])
        >>> metric(torch.zeros(2, 3, 4), torch.full((2, 3, 4), 2.0))
        tensor(2.)
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    weighted_sum: Tensor
    weight_total: Tensor
    weights: Tensor

    def __init__(
        self, latitudes: Sequence[float] | Tensor | None = None, num_outputs: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}.")
        self.num_outputs = num_outputs
        weights = (
            torch.zeros(0, dtype=torch.float64)
            if latitudes is None
            else latitude_weights(latitudes)
        )
        self.register_buffer("weights", weights, persistent=False)
        self.add_state(
            "weighted_sum", torch.zeros(num_outputs, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "weight_total", torch.zeros(num_outputs, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def _check(self, preds: Tensor, target: Tensor, rows: int) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ.")
        dims = 2 if self.num_outputs == 1 else 3
        if preds.ndim < dims:
            raise ValueError(
                f"Expected inputs with at least {dims} dims (..., {'C, ' * (dims == 3)}H, W)."
            )
        if preds.shape[-2] != rows:
            raise ValueError(
                f"The latitude axis (dim -2) has {preds.shape[-2]} rows but {rows} "
                "latitudes were given. Inputs must be (..., H=lat, W=lon); check for swapped axes."
            )
        if self.num_outputs > 1 and preds.shape[-3] != self.num_outputs:
            raise ValueError(
                f"Expected {self.num_outputs} variables on dim -3, got {preds.shape[-3]}."
            )

    def _row_weights(self, preds: Tensor, latitudes: Tensor | None) -> Tensor:
        """Weights broadcastable to ``preds``: the constructor's, or cos of ``latitudes``."""
        if latitudes is None:
            if self.weights.numel() == 0:
                raise ValueError(
                    "LatitudeWeightedRMSE has no latitudes: pass `latitudes` to the constructor "
                    "(one grid) or to update() (per batch, e.g. the `lat` key of ERA5 samples)."
                )
            return self.weights.to(preds.device)[:, None]
        lat = torch.as_tensor(latitudes, device=preds.device)
        cos = _cosines(lat)
        if lat.ndim == 1:
            return cos[:, None]
        if lat.ndim != 2 or lat.shape[0] != preds.shape[0]:
            raise ValueError(
                f"latitudes must be (H,) or (B, H) with B = {preds.shape[0]} samples, got "
                f"shape {tuple(lat.shape)}."
            )
        return cos.reshape(lat.shape[0], *[1] * (preds.ndim - 3), lat.shape[1], 1)

    def update(self, preds: Tensor, target: Tensor, latitudes: Tensor | None = None) -> None:
        """Accumulate ``sum(w * err^2)`` and ``sum(w)`` per variable.

        Args:
            preds: predictions (..., H, W), or (..., C, H, W) with ``num_outputs = C``.
            target: same shape as ``preds``.
            latitudes: optional (H,) or (B, H) latitudes in degrees of these fields' rows
                (B the leading dim of ``preds``), used instead of the constructor's.
        """
        weights = self._row_weights(preds, latitudes)
        self._check(preds, target, weights.shape[-2])
        weights = weights.expand(preds.shape)
        err2 = (preds.double() - target.double()) ** 2 * weights
        if self.num_outputs == 1:
            self.weighted_sum += err2.sum()
            self.weight_total += weights.sum()
        else:
            dims = [d for d in range(preds.ndim) if d != preds.ndim - 3]
            self.weighted_sum += err2.sum(dim=dims)
            self.weight_total += weights.sum(dim=dims)

    def compute(self) -> Tensor:
        """The RMSE per variable (shape (C,)), or a scalar when ``num_outputs == 1``."""
        rmse = (self.weighted_sum / self.weight_total).sqrt().float()
        return rmse[0] if self.num_outputs == 1 else rmse
