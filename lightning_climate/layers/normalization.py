"""Per-channel affine normalisation whose statistics are buffers (they travel with checkpoints)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MinMaxNormalizer"]


class MinMaxNormalizer(nn.Module):
    """Map each channel affinely from [minimum, maximum] to [0, 1], and back.

    One affine map is shared by low- and high-resolution fields, so block means (and therefore
    conservation constraints) survive normalisation; and non-negative outputs in normalised space
    (softmax constraint) map to values above the training minimum in physical units.

    Args:
        num_channels: number of channels (dimension 1 of the inputs).
        eps: added to the range to avoid division by zero on constant channels.
    """

    minimum: Tensor
    maximum: Tensor

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("minimum", torch.zeros(num_channels))
        self.register_buffer("maximum", torch.ones(num_channels) - eps)

    def set_statistics(self, minimum: Tensor, maximum: Tensor) -> None:
        """Store per-channel training statistics of shape (C,)."""
        minimum = torch.as_tensor(minimum, dtype=self.minimum.dtype).flatten()
        maximum = torch.as_tensor(maximum, dtype=self.maximum.dtype).flatten()
        if minimum.shape != self.minimum.shape or maximum.shape != self.maximum.shape:
            raise ValueError(
                f"statistics must have {self.minimum.numel()} channels, got {minimum.numel()} "
                f"(minimum) and {maximum.numel()} (maximum)."
            )
        if not bool(torch.all(maximum >= minimum)):
            raise ValueError("every channel's maximum must be >= its minimum.")
        self.minimum.copy_(minimum)
        self.maximum.copy_(maximum)

    def _view(self, stat: Tensor, x: Tensor) -> Tensor:
        return stat.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (B, C, ...)."""
        scale = self._view(self.maximum - self.minimum + self.eps, x)
        return (x - self._view(self.minimum, x)) / scale

    def inverse(self, y: Tensor) -> Tensor:
        """Map normalised ``y`` back to physical units."""
        scale = self._view(self.maximum - self.minimum + self.eps, y)
        return y * scale + self._view(self.minimum, y)
