"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.images import ImageClassificationDataset

__all__ = ["ImageClassificationDataset"]
