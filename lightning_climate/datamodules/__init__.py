"""LightningDataModules, one file per data set."""

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datamodules.digits import DigitsDataModule

__all__ = ["BaseDataModule", "DigitsDataModule"]
