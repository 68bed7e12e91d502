"""The one normaliser of the package: ``(x - shift) / scale`` with statistics in buffers.

Every task normalises the batch keys it models with a :class:`Normalizer` filled from its
datamodule's :meth:`~lightning_climate.datamodules.BaseDataModule.train_statistics`, so the
statistics come from the training split only and travel with checkpoints in the task's
``state_dict``. Datasets return physical units and batches never carry statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["Normalizer"]

Method = Literal["zscore", "minmax"]


class Normalizer(nn.Module):
    """Affine map ``x -> (x - shift) / scale`` of one batch key, and its inverse.

    The statistics are named after the batch key in the datamodule's ``train_statistics()``:
    ``{key}_mean`` and ``{key}_std`` for ``method="zscore"``, ``{key}_min`` and ``{key}_max`` for
    ``method="minmax"`` (then ``scale = max - min + eps``). Until :meth:`fit` is called the map is
    the identity.

    Shapes: a statistic of shape ``(C,)`` applies to dimension ``channel_dim`` of the input; a
    scalar applies everywhere; any other shape must broadcast against one sample
    (``x.shape[1:]``), e.g. a climatology ``(T, C, H, W)``. With ``grouped=True`` the statistics
    carry a leading group dimension (e.g. one row per climate model) and every call passes the
    group of each sample.

    Buffers take the shapes of the statistics they are given, also when a checkpoint is loaded
    into a freshly built normaliser.

    Args:
        key: batch key whose statistics are used (e.g. ``"hr"``, ``"y"``, ``"image"``).
        method: ``"zscore"`` or ``"minmax"``.
        channel_dim: input dimension of the channels for per-channel statistics.
        grouped: statistics have a leading group dimension selected per sample.
        eps: added to the min–max range, so constant channels do not divide by zero.
        share_channels: ``"minmax"`` only: one range over all channels (the smallest minimum
            and the largest maximum), so an order between channels survives normalisation.
    """

    shift: Tensor
    scale: Tensor

    def __init__(
        self,
        key: str,
        method: Method = "zscore",
        channel_dim: int = 1,
        grouped: bool = False,
        eps: float = 0.0,
        share_channels: bool = False,
    ) -> None:
        super().__init__()
        if share_channels and method != "minmax":
            raise ValueError("share_channels needs method='minmax'.")
        if method not in ("zscore", "minmax"):
            raise ValueError(f"method must be 'zscore' or 'minmax', got {method!r}.")
        if channel_dim < 1:
            raise ValueError(f"channel_dim must be >= 1 (0 is the batch), got {channel_dim}.")
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {eps}.")
        self.key, self.method, self.channel_dim = key, method, channel_dim
        self.grouped, self.eps, self.share_channels = grouped, eps, share_channels
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def statistic_names(self) -> tuple[str, str]:
        """The two ``train_statistics()`` entries this normaliser reads."""
        suffixes = ("mean", "std") if self.method == "zscore" else ("min", "max")
        return f"{self.key}_{suffixes[0]}", f"{self.key}_{suffixes[1]}"

    def fit(self, statistics: Mapping[str, Tensor]) -> None:
        """Take ``shift`` and ``scale`` from a datamodule's training statistics.

        Raises:
            KeyError: a statistic is missing (the message lists those available).
            ValueError: a statistic is not finite, or a scale is not positive.
        """
        first, second = self.statistic_names
        missing = [name for name in (first, second) if name not in statistics]
        if missing:
            raise KeyError(
                f"Normalizer({self.key!r}) needs the training statistics {missing}, but the "
                f"datamodule provides {sorted(statistics)}; give the datamodule's train_statistics() "
                "those entries or choose another normalisation in the task."
            )
        dtype = torch.get_default_dtype()
        shift = torch.as_tensor(statistics[first]).to(dtype)
        other = torch.as_tensor(statistics[second]).to(dtype)
        if self.share_channels:
            shift, other = shift.min().expand_as(shift), other.max().expand_as(other)
        scale = other - shift + self.eps if self.method == "minmax" else other
        self.set_statistics(shift, scale)

    def set_statistics(self, shift: Tensor, scale: Tensor) -> None:
        """Store ``shift`` and ``scale`` directly; each follows the shape rules of the class doc."""
        shift = torch.as_tensor(shift).to(torch.get_default_dtype())
        scale = torch.as_tensor(scale).to(torch.get_default_dtype())
        if shift.shape != scale.shape and not self._per_channel_scale(shift, scale):
            raise ValueError(
                f"Normalizer({self.key!r}): shift {tuple(shift.shape)} and scale "
                f"{tuple(scale.shape)} must have the same shape, or the scale one value per "
                "channel of the shift (a climatology divided by a per-channel std)."
            )
        if self.grouped and (shift.ndim == 0 or scale.ndim == 0 or len(shift) != len(scale)):
            raise ValueError(
                f"Normalizer({self.key!r}) is grouped: shift {tuple(shift.shape)} and scale "
                f"{tuple(scale.shape)} need the same leading group dimension."
            )
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all()):
            raise ValueError(
                f"Normalizer({self.key!r}): the training statistics are not finite; the "
                "training split holds NaN or Inf values. Clean or mask them in the data."
            )
        if not bool((scale > 0).all()):
            raise ValueError(
                f"Normalizer({self.key!r}): a scale is not positive (a constant training channel "
                "with method='zscore'); use method='minmax' with eps > 0 or drop the channel."
            )
        self.shift = shift.to(self.shift.device)
        self.scale = scale.to(self.scale.device)
        self.fitted.fill_(True)

    def _per_channel_scale(self, shift: Tensor, scale: Tensor) -> bool:
        """Whether ``scale`` holds one value per channel (and group) of a per-cell ``shift``."""
        lead = 1 if self.grouped else 0
        if scale.ndim != lead + 1 or shift.ndim < lead + self.channel_dim:
            return False
        channels = shift.shape[lead + self.channel_dim - 1]
        return shift.shape[:lead] == scale.shape[:lead] and scale.shape[-1] == channels

    def _align(self, stat: Tensor, x: Tensor, group: Tensor | None) -> Tensor:
        if stat.ndim == 0:  # the identity before fit, or one scalar for every value
            return stat.to(x.dtype)
        if self.grouped:
            if group is None:
                raise ValueError(
                    f"Normalizer({self.key!r}) has one row of statistics per group; pass the "
                    "batch's group ids (e.g. model_id)."
                )
            stat = stat[group.long()]
            per_sample = stat.ndim - 1
        else:
            per_sample = stat.ndim
        if per_sample == 1 and stat.shape[-1] != 1 and x.ndim > 2:
            shape = [1] * (x.ndim - 1)
            shape[self.channel_dim - 1] = stat.shape[-1]
            lead = stat.shape[0] if self.grouped else 1
            stat = stat.reshape(lead, *shape) if self.grouped else stat.reshape(shape)
        elif self.grouped:
            stat = stat.reshape(stat.shape[0], *([1] * (x.ndim - stat.ndim)), *stat.shape[1:])
        return stat.to(x.dtype)

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        """Normalise ``x``; ``group`` holds each sample's group id when ``grouped``."""
        try:
            return (x - self._align(self.shift, x, group)) / self._align(self.scale, x, group)
        except RuntimeError as err:
            raise self._shape_error(x) from err

    def inverse(self, y: Tensor, group: Tensor | None = None) -> Tensor:
        """Map normalised ``y`` back to physical units."""
        try:
            return y * self._align(self.scale, y, group) + self._align(self.shift, y, group)
        except RuntimeError as err:
            raise self._shape_error(y) from err

    def _shape_error(self, x: Tensor) -> ValueError:
        hint = (
            " If the statistics have one row per group (e.g. per climate model), build the "
            "normaliser with grouped=True (CausalDiscoveryTask(group_key='model_id'))."
            if not self.grouped
            else ""
        )
        return ValueError(
            f"Normalizer({self.key!r}): statistics of shape {tuple(self.shift.shape)} and "
            f"{tuple(self.scale.shape)} do not fit the input of shape {tuple(x.shape)} with "
            f"channel_dim={self.channel_dim}.{hint}"
        )

    def extra_repr(self) -> str:
        """Key, method and statistics shape, for ``print(task)``."""
        return (
            f"key={self.key!r}, method={self.method!r}, channel_dim={self.channel_dim}, "
            f"grouped={self.grouped}, shape={tuple(self.shift.shape)}"
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The statistics' shapes are known only once fitted; take them from the checkpoint.
        for name in ("shift", "scale"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
