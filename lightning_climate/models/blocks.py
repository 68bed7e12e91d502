"""Convolutional building blocks shared by the downscaling models."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ResidualBlock"]


class ResidualBlock(nn.Module):
    """``conv3x3 -> ReLU -> conv3x3`` plus the input (bias-free convolutions, as in EDSR/ESRGAN).

    Args:
        channels: feature channels in and out.
        activate_output: apply a ReLU after the addition (Harder et al.'s SR-CNN) or not (DFNO).
    """

    def __init__(self, channels: int, activate_output: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )
        self.activation = nn.ReLU(inplace=True) if activate_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Return ``activation(x + body(x))``."""
        return self.activation(x + self.body(x))
