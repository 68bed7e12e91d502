"""Plain ReLU networks as ``nn.Sequential``: the architectures the functional dimension supports.

Small enough for CPU runs on the digits, and YAML-settable as the ``model`` of
:class:`~lightning_climate.tasks.ClassificationTask` (``class_path: lightning_climate.models.ReLUMLP``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

__all__ = ["ReLUCNN", "ReLUMLP"]


class ReLUMLP(nn.Sequential):
    """``Flatten -> (Linear -> ReLU) x len(hidden) -> Linear``.

    Args:
        in_features: inputs per example after flattening (64 for 8x8 digits).
        hidden: widths of the hidden layers.
        num_classes: outputs.
    """

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (32,), num_classes: int = 10
    ) -> None:
        if in_features < 1 or num_classes < 1 or any(w < 1 for w in hidden):
            raise ValueError(
                f"in_features, hidden widths and num_classes must be positive, got {in_features}, "
                f"{list(hidden)}, {num_classes}."
            )
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class ReLUCNN(nn.Sequential):
    """``(Conv3x3 -> ReLU -> MaxPool2) x len(channels) -> Flatten -> Linear``.

    Args:
        in_channels: image channels.
        channels: output channels of each convolution block (each halves the image side).
        image_size: side of the square input images.
        num_classes: outputs.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16),
        image_size: int = 8,
        num_classes: int = 10,
    ) -> None:
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ValueError(
                f"{len(channels)} pooling blocks shrink {image_size}px images to nothing; use "
                "fewer `channels` or a larger `image_size`."
            )
        layers: list[nn.Module] = []
        widths = [in_channels, *channels]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(widths[-1] * side * side, num_classes)]
        super().__init__(*layers)
