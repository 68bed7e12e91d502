"""U-Net emulator applied to each month (the ClimateSet U-Net baseline, written from its description).

The benchmark's U-Net maps each month's forcings to that month's outputs (no temporal mixing). The
grid is padded to a multiple of ``2**depth`` before the encoder, circularly along longitude (the
globe wraps around) and by edge replication along latitude, then cropped back, so any H x W works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet"]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = min(8, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


def pad_globe(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) to multiples of ``multiple``: circular in W (longitude), edge in H."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="circular")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="replicate")
    return x, (height, width)


class UNet(nn.Module):
    """U-Net over (B, T, C_in, H, W) -> (B, T, C_out, H, W), one month at a time.

    Args:
        in_channels: number of input variables.
        out_channels: number of output variables (or features, inside a super emulator).
        base_channels: channels of the first level; doubled at each of the ``depth`` levels.
        depth: number of down-sampling steps.
    """

    def __init__(
        self, in_channels: int, out_channels: int, base_channels: int = 32, depth: int = 3
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, base_channels, depth) < 1:
            raise ValueError("in_channels, out_channels, base_channels and depth must be >= 1.")
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = _block(in_channels, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C_in, H, W) to (B, T, C_out, H, W)."""
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"Expected (B, T, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        batch, steps = x.shape[:2]
        h, (height, width) = pad_globe(x.flatten(0, 1), 2**self.depth)
        skips = [self.stem(h)]
        for down in self.down:
            skips.append(down(F.avg_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        out = self.head(h)[..., :height, :width]
        return out.reshape(batch, steps, self.out_channels, height, width)
