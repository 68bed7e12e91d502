"""CIFAR-10/100 from files the user already has (no download), with standard augmentation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.cifar import read_cifar
from lightning_climate.datasets.images import ImageClassificationDataset, channel_stats

__all__ = ["CIFARDataModule", "random_crop_flip"]

#: images in the official CIFAR training set; test images are indexed after them.
NUM_TRAIN = 50_000


def random_crop_flip(
    images: Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    fill: Tensor | None = None,
) -> Tensor:
    """Per-image random crop of the padded batch and random horizontal flip.

    The standard CIFAR augmentation (He et al.): the border is ``fill`` per channel (zeros by
    default); padding with the training mean equals zero padding of standardised images.
    """
    b, c, h, w = images.shape
    if fill is None:
        padded = F.pad(images, (padding, padding, padding, padding))
    else:
        size = (b, c, h + 2 * padding, w + 2 * padding)
        padded = fill.to(images).view(1, c, 1, 1).expand(size).clone()
        padded[..., padding : padding + h, padding : padding + w] = images
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = torch.rand(b, generator=generator).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class CIFARDataModule(BaseDataModule):
    """CIFAR-10 or CIFAR-100 read from ``root`` (binary or python distribution).

    The official training set is split into train and validation, stratified by class with a
    fixed ``seed``; the official test set is the test split. Samples are
    ``{"image": float32 (3, 32, 32), "label": int64, "index": int64}`` with ``index`` the
    position in the training files (0..49999) or ``50000 +`` the position in the test files.
    Pixels are scaled to [0, 1]; :meth:`train_statistics` gives the per-channel ``image_mean`` and
    ``image_std`` of the training split, which the task standardises with. Training batches get a
    random 32x32 crop of the image padded by 4 pixels of the training mean and a random horizontal
    flip, on the device, in :meth:`on_after_batch_transfer`.

    Args:
        root: folder holding ``cifar-10-batches-bin`` / ``cifar-10-batches-py`` (or the
            CIFAR-100 folders); nothing is downloaded.
        variant: 10 or 100.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the train/validation split.
        val_fraction: share of the training files held out for validation.
        augment: apply crop and flip to training batches.
        manifest: checksum list (``sha256sum``/``md5sum`` output) of the CIFAR files, checked in
            ``prepare_data`` before anything is read (see :meth:`BaseDataModule.verify_manifest`).
    """

    def __init__(
        self,
        root: str | Path = "data",
        variant: Literal[10, 100] = 10,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        augment: bool = True,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, manifest=manifest
        )
        if variant not in (10, 100):
            raise ValueError(f"variant must be 10 or 100, got {variant!r}.")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        self.root = Path(root)
        self.variant = variant
        self.val_fraction = val_fraction
        self.augment = augment

    def setup(self, stage: str | None = None) -> None:
        """Read the files, split train/validation, compute training statistics."""
        images, labels = read_cifar(self.root, self.variant, "train")
        order = np.arange(len(labels))
        train, val = train_test_split(
            order, test_size=self.val_fraction, stratify=labels.numpy(), random_state=self.seed
        )
        train, val = torch.as_tensor(np.sort(train)), torch.as_tensor(np.sort(val))

        def subset(
            imgs: Tensor, labs: Tensor, idx: Tensor, offset: int = 0
        ) -> ImageClassificationDataset:
            return ImageClassificationDataset(imgs[idx], labs[idx], idx + offset, 1 / 255)

        self.train_dataset = subset(images, labels, train)
        self.val_dataset = subset(images, labels, val)
        test_images, test_labels = read_cifar(self.root, self.variant, "test")
        everything = torch.arange(len(test_labels))
        self.test_dataset = subset(test_images, test_labels, everything, NUM_TRAIN)
        self.predict_dataset = self.test_dataset

    def on_after_batch_transfer(
        self, batch: dict[str, Tensor], dataloader_idx: int
    ) -> dict[str, Tensor]:
        """Crop and flip training batches (only while fitting, not validating)."""
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            fill = self.train_statistics()["image_mean"]
            batch = {**batch, "image": random_crop_flip(batch["image"], fill=fill)}
        return batch

    def compute_train_statistics(self) -> dict[str, Tensor]:
        """``image_mean`` and ``image_std`` per channel of the training pixels."""
        assert isinstance(self.train_dataset, ImageClassificationDataset)
        mean, std = channel_stats(self.train_dataset.images, scale=1 / 255)
        return {"image_mean": mean, "image_std": std}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """Three colour channels."""
        return {"image_mean": (3,), "image_std": (3,)}
