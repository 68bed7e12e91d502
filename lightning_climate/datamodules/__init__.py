"""LightningDataModules, one file per data set."""

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datamodules.oc20 import OC20DataModule

__all__ = ["BaseDataModule", "OC20DataModule"]
