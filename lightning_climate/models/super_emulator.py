"""Super emulator: one backbone shared by several climate models, one decoder head per model.

As in ClimateSet, the heads are small stacks of 1x1 convolutions (2 layers, hidden 32) on the
backbone's feature maps, and each sample is decoded by the head of its own climate model
(``model_id``), so a batch may mix climate models.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SuperEmulator"]


class SuperEmulator(nn.Module):
    """Shared backbone (B, T, C_in, H, W) -> (B, T, F, H, W), then per-model heads F -> C_out.

    Args:
        backbone: any emulator of this package built with ``out_channels=feature_channels``.
        num_climate_models: number of heads (the datamodule's ``climate_models``).
        feature_channels: channels produced by the backbone.
        out_channels: output variables.
        head_hidden: hidden width of each head.
        head_layers: 1x1 convolutions per head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_climate_models: int,
        feature_channels: int,
        out_channels: int,
        head_hidden: int = 32,
        head_layers: int = 2,
    ) -> None:
        super().__init__()
        if num_climate_models < 1 or head_layers < 1:
            raise ValueError("num_climate_models and head_layers must be >= 1.")
        self.backbone = backbone
        self.num_climate_models, self.out_channels = num_climate_models, out_channels

        def head() -> nn.Sequential:
            layers: list[nn.Module] = []
            width = feature_channels
            for _ in range(head_layers - 1):
                layers += [nn.Conv2d(width, head_hidden, 1), nn.GELU()]
                width = head_hidden
            return nn.Sequential(*layers, nn.Conv2d(width, out_channels, 1))

        self.heads = nn.ModuleList(head() for _ in range(num_climate_models))

    def forward(self, x: Tensor, model_id: Tensor) -> Tensor:
        """Decode every sample of ``x`` with the head of its ``model_id`` (shape (B,))."""
        if model_id.shape != x.shape[:1]:
            raise ValueError(
                f"model_id must have shape ({x.shape[0]},), got {tuple(model_id.shape)}."
            )
        if (model_id < 0).any() or (model_id >= self.num_climate_models).any():
            raise ValueError(
                f"model_id {model_id.tolist()} out of range for {self.num_climate_models} heads; "
                "set num_climate_models to the number of climate models of the datamodule."
            )
        features = self.backbone(x)
        batch, steps = features.shape[:2]
        out = features.new_zeros(batch, steps, self.out_channels, *features.shape[-2:])
        for index, head in enumerate(self.heads):
            mask = model_id == index
            if mask.any():
                out[mask] = head(features[mask].flatten(0, 1)).unflatten(0, (-1, steps))
        return out
