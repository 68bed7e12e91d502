"""In-memory image classification dataset shared by the digits and CIFAR datamodules."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageClassificationDataset", "channel_stats"]


class ImageClassificationDataset(Dataset[dict[str, Tensor]]):
    """Images held in one tensor, scaled to [0, 1] when a sample is read (tasks normalise).

    Samples are ``{"image": float32 (C, H, W), "label": int64 scalar, "index": int64 scalar}``
    where ``index`` is the image's position in the full source data set (not in this split), so
    per-example scores stay comparable across splits, seeds and processes.

    Args:
        images: ``(N, C, H, W)`` float or uint8 images in their stored scale.
        labels: ``(N,)`` integer class labels.
        indices: ``(N,)`` positions of the images in the full data set.
        scale: factor applied first (e.g. ``1/255`` for uint8 CIFAR, ``1/16`` for digits).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        scale: float = 1.0,
    ) -> None:
        if not (len(images) == len(labels) == len(indices)):
            raise ValueError(
                f"images, labels and indices must have the same length, got {len(images)}, "
                f"{len(labels)} and {len(indices)}."
            )
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
        self.images = images
        self.labels = labels.long()
        self.indices = indices.long()
        self.scale = scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image = self.images[i].float() * self.scale
        return {"image": image, "label": self.labels[i], "index": self.indices[i]}


def channel_stats(images: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``images * scale`` (training split only)."""
    x = images.float() * scale
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(torch.finfo(torch.float32).eps)
