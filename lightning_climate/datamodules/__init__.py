"""LightningDataModules, one file per data set."""

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datamodules.causal_synthetic import CausalSyntheticDataModule
from lightning_climate.datamodules.climateset import ClimateSetDataModule

__all__ = ["BaseDataModule", "CausalSyntheticDataModule", "ClimateSetDataModule"]
