"""DFNO: a Fourier neural operator that downscales by any factor chosen at call time.

After Yang et al., "Fourier Neural Operators for Arbitrary Resolution Climate Data Downscaling"
(2023): a convolutional feature extractor runs at the input grid, the features are interpolated
to the target grid, Fourier layers (``neuraloperator``'s ``FNOBlocks``) run at the target grid,
and a pointwise MLP projects to the output channels. The output is added to the interpolated
input, so the network learns the correction to plain interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

from neuralop.layers.fno_block import FNOBlocks
from torch import Tensor, nn

from lightning_climate.models.blocks import ResidualBlock
from lightning_climate.models.interpolation import InterpolationMode, resize, target_size

__all__ = ["DFNO"]


class DFNO(nn.Module):
    """Downscaling Fourier neural operator.

    The factor is a forward argument, so one trained model serves every output grid (1×, the
    learned 2×, zero-shot 4×, or non-integer factors whose output sizes are whole numbers). The
    number of parameters does not depend on the factor.

    Args:
        in_channels: channels of the low-resolution input.
        out_channels: channels of the output (defaults to ``in_channels``).
        hidden_channels: feature channels of the extractor and the Fourier layers.
        num_residual_blocks: residual blocks of the low-resolution feature extractor.
        n_modes: Fourier modes kept per axis, counted as in ``neuraloperator`` (both signs, so
            16 here equals ``modes=8`` in Li et al.'s code). Clipped to the grid at run time.
        num_fourier_layers: Fourier layers at the target grid (GELU between them, none after the last).
        projection_channels: width of the pointwise projection MLP.
        interpolation: how features and the residual input reach the target grid. ``"fourier"``
            (exact for band-limited periodic fields, e.g. Navier–Stokes) or ``"bicubic"`` (the
            paper's choice; better for non-periodic domains such as regional ERA5 crops).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int = 32,
        num_residual_blocks: int = 3,
        n_modes: Sequence[int] = (16, 16),
        num_fourier_layers: int = 2,
        projection_channels: int = 128,
        interpolation: InterpolationMode = "bicubic",
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if len(n_modes) != 2 or min(n_modes) < 1:
            raise ValueError(f"n_modes must be two positive integers, got {n_modes}.")
        self.interpolation = interpolation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            *[ResidualBlock(hidden_channels) for _ in range(num_residual_blocks)],
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fourier = FNOBlocks(
            hidden_channels,
            hidden_channels,
            n_modes=tuple(n_modes),
            n_layers=num_fourier_layers,
            use_channel_mlp=False,
            fno_skip="linear",
        )
        self.projection = nn.Sequential(
            nn.Conv2d(hidden_channels, projection_channels, 1),
            nn.GELU(),
            nn.Conv2d(projection_channels, out_channels, 1),
        )
        self.residual = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: Tensor, factor: float = 2.0) -> Tensor:
        """Downscale ``x`` of shape (B, C_in, h, w) to (B, C_out, h*factor, w*factor)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DFNO expects input of shape (B, {self.in_channels}, h, w), got {tuple(x.shape)}."
            )
        size = target_size(tuple(x.shape[-2:]), factor)
        features = resize(self.encoder(x), size, self.interpolation)
        for index in range(self.fourier.n_layers):
            features = self.fourier(features, index)
        return self.projection(features) + self.residual(resize(x, size, self.interpolation))
