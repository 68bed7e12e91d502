"""Residual super-resolution CNN at a fixed factor (the SR-CNN of Harder et al., 2023)."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_climate.models.blocks import ResidualBlock
from lightning_climate.models.interpolation import InterpolationMode, resize, target_size

__all__ = ["SRCNN", "PaddingMode"]

PaddingMode = Literal["zeros", "circular", "reflect", "replicate"]


class SRCNN(nn.Module):
    """Convolutional super-resolution network trained at one factor.

    ``conv3x3 + ReLU`` at the input grid, then transposed convolutions (×2 each, or one ×3) that
    upsample early, ``conv3x3 + ReLU``, residual blocks, ``conv3x3 + ReLU`` and a 1×1 projection.

    Called with another factor than its own (for the 1× and zero-shot 4× columns of the DFNO
    comparison), it upsamples by its own factor and resamples the result to the requested grid with
    ``off_factor_interpolation``: the "bicubic-adjusted" protocol of Yang et al.

    The defaults are Harder et al.'s network. Two options matter on small data and periodic
    fields (see docs/navier_stokes.md): ``padding_mode="circular"`` for fields on a torus (zero
    padding makes every border pixel wrong), and ``residual="bicubic"`` to learn only the
    correction to interpolation, as DFNO does, instead of the whole field from scratch.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (defaults to ``in_channels``).
        factor: the upsampling factor, a power of two or 3.
        hidden_channels: feature channels.
        num_residual_blocks: residual blocks after upsampling.
        off_factor_interpolation: resampling used when called with another factor.
        padding_mode: padding of every 3×3 convolution (``"circular"`` for periodic fields).
        residual: if set, the network's output is added to the input interpolated with this
            mode to the model's own factor (a global skip connection); with circular padding the
            interpolation wraps around the borders too.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        factor: int = 2,
        hidden_channels: int = 32,
        num_residual_blocks: int = 4,
        off_factor_interpolation: InterpolationMode = "bicubic",
        padding_mode: PaddingMode = "zeros",
        residual: InterpolationMode | None = None,
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "circular", "reflect", "replicate"):
            raise ValueError(
                f"padding_mode must be 'zeros', 'circular', 'reflect' or 'replicate', got "
                f"{padding_mode!r}; use 'circular' for periodic fields."
            )
        out_channels = in_channels if out_channels is None else out_channels
        if factor == 3:
            ups = [nn.ConvTranspose2d(hidden_channels, hidden_channels, 3, stride=3)]
        elif factor >= 1 and 2 ** round(math.log2(factor)) == factor:
            ups = [
                nn.ConvTranspose2d(hidden_channels, hidden_channels, 2, stride=2)
                for _ in range(round(math.log2(factor)))
            ]
        else:
            raise ValueError(f"SRCNN supports factors 1, 2, 4, 8, ... and 3, got factor={factor}.")
        self.factor = factor
        self.off_factor_interpolation = off_factor_interpolation
        self.residual = residual
        self.padding_mode = padding_mode
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            *ups,
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            *[
                ResidualBlock(hidden_channels, activate_output=True)
                for _ in range(num_residual_blocks)
            ],
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
        if residual is not None and out_channels != in_channels:
            raise ValueError(
                f"residual={residual!r} adds the interpolated input to the output, so out_channels "
                f"({out_channels}) must equal in_channels ({in_channels}); or set residual=None."
            )
        # Conv2d pads with F.pad(mode=padding_mode) whenever it is not "zeros"; the padding widths
        # are fixed at construction, so the mode can be set on the shared residual blocks too.
        for module in self.body.modules():
            if isinstance(module, nn.Conv2d):
                module.padding_mode = padding_mode

    def _interpolate(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``x`` resized to ``size`` for the residual; periodic when the padding is circular."""
        if self.padding_mode != "circular":
            return resize(x, size, self.residual)
        # Wrap 2 pixels (the bicubic support) around, resize by the integer factor and crop:
        # the same grid as resizing x alone, but the borders see the other side of the torus.
        (h, w), pad = x.shape[-2:], 2
        fh, fw = size[0] // h, size[1] // w
        wrapped = F.pad(x, (pad, pad, pad, pad), mode="circular")
        big = resize(wrapped, ((h + 2 * pad) * fh, (w + 2 * pad) * fw), self.residual)
        return big[..., pad * fh : pad * fh + size[0], pad * fw : pad * fw + size[1]]

    def forward(self, x: Tensor, factor: float | None = None) -> Tensor:
        """Upsample ``x`` (B, C, h, w) by the model's factor, then resample to ``factor`` if it differs."""
        y = self.body(x)
        if self.residual is not None:
            y = y + self._interpolate(x, tuple(y.shape[-2:]))
        if factor is None or factor == self.factor:
            return y
        return resize(y, target_size(tuple(x.shape[-2:]), factor), self.off_factor_interpolation)
