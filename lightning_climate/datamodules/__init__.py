"""LightningDataModules, one file per data set."""

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datamodules.causal_synthetic import CausalSyntheticDataModule
from lightning_climate.datamodules.cifar import CIFARDataModule
from lightning_climate.datamodules.climateset import ClimateSetDataModule
from lightning_climate.datamodules.digits import DigitsDataModule
from lightning_climate.datamodules.era5 import ERA5DataModule
from lightning_climate.datamodules.navier_stokes import NavierStokesDataModule
from lightning_climate.datamodules.oc20 import OC20DataModule
from lightning_climate.datamodules.sampler import ResumableDataLoader, ResumableSampler

__all__ = [
    "BaseDataModule",
    "CIFARDataModule",
    "CausalSyntheticDataModule",
    "ClimateSetDataModule",
    "DigitsDataModule",
    "ERA5DataModule",
    "NavierStokesDataModule",
    "OC20DataModule",
    "ResumableDataLoader",
    "ResumableSampler",
]
