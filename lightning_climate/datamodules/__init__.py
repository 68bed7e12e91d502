"""LightningDataModules, one file per data set."""

from lightning_climate.datamodules.base import BaseDataModule

__all__ = ["BaseDataModule"]
