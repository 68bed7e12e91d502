"""scikit-learn's bundled handwritten digits (real data shipped with the package, no download)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.images import ImageClassificationDataset, channel_stats

__all__ = ["DigitsDataModule"]

#: number of images in the bundled data set (UCI optical recognition of handwritten digits, test part).
NUM_DIGITS = 1797


class DigitsDataModule(BaseDataModule):
    """The 1797 8x8 grey-level digits of :func:`sklearn.datasets.load_digits`, 10 classes.

    Splits are stratified by class with a fixed ``seed`` (identical on every rank and run).
    Samples are ``{"image": float32 (1, S, S), "label": int64, "index": int64}`` with ``index`` the
    position in the full 1797-image set, so it is stable across splits and runs.

    Pixel counts (0..16) are divided by 16 and optionally resized bilinearly to ``image_size``.
    :meth:`train_statistics` gives ``image_mean`` and ``image_std`` ((1,)) of the *training split*
    pixels, which :class:`~lightning_climate.tasks.ClassificationTask` standardises with (and
    checkpoints carry). No augmentation is applied (digits are not flip-invariant).

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the stratified split.
        val_fraction: share of all images in the validation split.
        test_fraction: share of all images in the test split.
        image_size: side of the square images handed to the model (8 is native).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        image_size: int = 8,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                "val_fraction and test_fraction must be in (0, 1) with a sum below 1, got "
                f"val_fraction={val_fraction}, test_fraction={test_fraction}."
            )
        if image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}.")
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.image_size = image_size

    def split_indices(self) -> dict[str, np.ndarray]:
        """Positions in the full data set of the train, val and test images (stratified, seeded)."""
        labels = load_digits().target
        everything = np.arange(len(labels))
        rest, test = train_test_split(
            everything, test_size=self.test_fraction, stratify=labels, random_state=self.seed
        )
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=labels[rest], random_state=self.seed
        )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits; the predict split is the test split."""
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != images.shape[-1]:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        splits = {k: torch.as_tensor(v) for k, v in self.split_indices().items()}

        def subset(idx: torch.Tensor) -> ImageClassificationDataset:
            return ImageClassificationDataset(images[idx], labels[idx], idx)

        self.train_dataset = subset(splits["train"])
        self.val_dataset = subset(splits["val"])
        self.test_dataset = subset(splits["test"])
        self.predict_dataset = self.test_dataset

    def compute_train_statistics(self) -> dict[str, torch.Tensor]:
        """``image_mean`` and ``image_std`` per channel of the training pixels."""
        assert isinstance(self.train_dataset, ImageClassificationDataset)
        mean, std = channel_stats(self.train_dataset.images, scale=1.0)
        return {"image_mean": mean, "image_std": std}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """One grey channel."""
        return {"image_mean": (1,), "image_std": (1,)}
