"""A timm image model as a module that YAML can name by ``class_path`` (no download)."""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

__all__ = ["TimmModel"]


class TimmModel(nn.Module):
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=..., **kwargs)``.

    Lets a task take every model as a module, timm's included:
    ``model: {class_path: TimmModel, init_args: {name: resnet18, num_classes: 10}}``. Weights are
    initialised as timm does; nothing is downloaded.

    Args:
        name: a timm model name, e.g. ``"resnet18"``, ``"test_resnet"`` or ``"vit_tiny_patch16_224"``.
        num_classes: outputs of the classifier.
        in_channels: image channels.
        model_kwargs: further arguments of the timm model, e.g. ``{img_size: 16, patch_size: 4}``.
    """

    def __init__(
        self,
        name: str,
        num_classes: int = 10,
        in_channels: int = 3,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(
                f"timm has no model {name!r}; list them with timm.list_models('*pattern*')."
            )
        self.model = timm.create_model(
            name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_channels,
            **(model_kwargs or {}),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of images ``(B, C, H, W)``."""
        return self.model(x)
