"""LightningDataModules, one file per data set.

Names are imported on first use (PEP 562): ``from lightning_climate.datamodules import
DigitsDataModule`` does not import PyG, netCDF or LMDB for the other data sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_climate.utils import lazy_exports

if TYPE_CHECKING:
    from lightning_climate.datamodules.base import BaseDataModule
    from lightning_climate.datamodules.causal_synthetic import CausalSyntheticDataModule
    from lightning_climate.datamodules.cifar import CIFARDataModule
    from lightning_climate.datamodules.climateset import ClimateSetDataModule
    from lightning_climate.datamodules.digits import DigitsDataModule
    from lightning_climate.datamodules.era5 import ERA5DataModule
    from lightning_climate.datamodules.navier_stokes import NavierStokesDataModule
    from lightning_climate.datamodules.oc20 import OC20DataModule
    from lightning_climate.datamodules.sampler import ResumableDataLoader, ResumableSampler

#: public name -> submodule that defines it
_SUBMODULES = {
    "BaseDataModule": "base",
    "CIFARDataModule": "cifar",
    "CausalSyntheticDataModule": "causal_synthetic",
    "ClimateSetDataModule": "climateset",
    "DigitsDataModule": "digits",
    "ERA5DataModule": "era5",
    "NavierStokesDataModule": "navier_stokes",
    "OC20DataModule": "oc20",
    "ResumableDataLoader": "sampler",
    "ResumableSampler": "sampler",
}

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

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULES)
