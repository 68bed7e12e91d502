"""ClimateBench's CNN-LSTM emulator (Watson-Parris et al. 2022), as benchmarked by ClimateSet.

Each month's forcing maps go through a 3x3 convolution, ReLU, 2x2 average pooling and a global
average pool; an LSTM runs over the months; a linear layer maps its state to full output maps.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CNNLSTM"]


class CNNLSTM(nn.Module):
    """CNN-LSTM over (B, T, C_in, H, W) -> (B, T, C_out, H, W).

    Args:
        in_channels: number of input variables.
        out_channels: number of output variables (or features, inside a super emulator).
        height: number of latitudes of the output grid.
        width: number of longitudes of the output grid.
        filters: convolution filters (20 in ClimateBench).
        hidden: LSTM hidden size (25 in ClimateBench).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        height: int,
        width: int,
        filters: int = 20,
        hidden: int = 25,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, height, width, filters, hidden) < 1:
            raise ValueError("All CNNLSTM sizes must be >= 1.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.height, self.width = height, width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, filters, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.lstm = nn.LSTM(filters, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, out_channels * height * width)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C_in, H, W) to (B, T, C_out, height, width)."""
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"Expected (B, T, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        batch, steps = x.shape[:2]
        features = self.encoder(x.flatten(0, 1)).reshape(batch, steps, -1)
        states, _ = self.lstm(features)
        return self.decoder(states).reshape(
            batch, steps, self.out_channels, self.height, self.width
        )
