"""Vision-transformer emulator on ``timm`` (a from-scratch, ClimaX-like patch transformer).

Each month's (C_in, H, W) fields are cut into ``patch_size`` patches by timm's
:class:`~timm.models.vision_transformer.VisionTransformer` (no class token, learned positions);
a linear head turns every output token back into a (C_out, patch, patch) tile. The grid is padded
to a multiple of the patch size (circular in longitude) and cropped back. ClimaX uses patch 16 on
96 x 144, i.e. 6 x 9 = 54 tokens.
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from lightning_climate.models.unet import pad_globe

__all__ = ["ViTEmulator"]


class ViTEmulator(nn.Module):
    """Patch transformer over (B, T, C_in, H, W) -> (B, T, C_out, H, W), one month at a time.

    Args:
        in_channels: number of input variables.
        out_channels: number of output variables (or features, inside a super emulator).
        height: number of latitudes.
        width: number of longitudes.
        patch_size: side of the square patches.
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width relative to ``embed_dim``.
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        height: int,
        width: int,
        patch_size: int = 16,
        embed_dim: int = 256,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}.")
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.grid = (-(-height // patch_size), -(-width // patch_size))
        self.encoder = VisionTransformer(
            img_size=(self.grid[0] * patch_size, self.grid[1] * patch_size),
            patch_size=patch_size,
            in_chans=in_channels,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.head = nn.Linear(embed_dim, out_channels * patch_size**2)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, T, C_in, H, W) to (B, T, C_out, H, W)."""
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"Expected (B, T, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        batch, steps = x.shape[:2]
        h, (height, width) = pad_globe(x.flatten(0, 1), self.patch_size)
        if h.shape[-2:] != tuple(g * self.patch_size for g in self.grid):
            raise ValueError(
                f"Grid {height}x{width} does not match the ViTEmulator built for "
                f"{self.grid[0] * self.patch_size}x{self.grid[1] * self.patch_size} (padded); "
                "set height and width to the data's grid."
            )
        tokens = self.head(self.encoder.forward_features(h))  # (N, gh*gw, C*p*p)
        gh, gw, p = *self.grid, self.patch_size
        tiles = tokens.reshape(-1, gh, gw, self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        out = tiles.reshape(-1, self.out_channels, gh * p, gw * p)[..., :height, :width]
        return out.reshape(batch, steps, self.out_channels, height, width)
