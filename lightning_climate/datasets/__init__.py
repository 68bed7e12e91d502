"""Readers of real on-disk formats and generators of embedded data.

Names are imported on first use (PEP 562), so ``import lightning_climate.datasets.<module>`` or one
reader does not import every other reader and its dependencies (PyG for OC20, netCDF for ClimateSet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_climate.utils import lazy_exports

if TYPE_CHECKING:
    from lightning_climate.datasets.causal_synthetic import (
        CausalSyntheticDataset,
        generate_causal_synthetic,
        read_causal_synthetic,
    )
    from lightning_climate.datasets.climateset import ClimateSet
    from lightning_climate.datasets.climateset_generate import generate_climateset
    from lightning_climate.datasets.era5 import ERA5Dataset
    from lightning_climate.datasets.era5_generate import generate_era5
    from lightning_climate.datasets.images import ImageClassificationDataset
    from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
    from lightning_climate.datasets.navier_stokes_generate import (
        generate_navier_stokes,
        trajectory_generator,
    )
    from lightning_climate.datasets.navier_stokes_solver import (
        gaussian_random_field,
        li_forcing,
        solve_vorticity,
    )
    from lightning_climate.datasets.oc20 import (
        OC20Data,
        OC20LMDBDataset,
        convert_oc20_lmdb,
        write_oc20_lmdb,
    )
    from lightning_climate.datasets.oc20_generate import generate_oc20

#: public name -> submodule that defines it
_SUBMODULES = {
    "CausalSyntheticDataset": "causal_synthetic",
    "ClimateSet": "climateset",
    "ERA5Dataset": "era5",
    "ImageClassificationDataset": "images",
    "NavierStokesTrajectories": "navier_stokes",
    "OC20Data": "oc20",
    "OC20LMDBDataset": "oc20",
    "convert_oc20_lmdb": "oc20",
    "gaussian_random_field": "navier_stokes_solver",
    "generate_causal_synthetic": "causal_synthetic",
    "generate_climateset": "climateset_generate",
    "generate_era5": "era5_generate",
    "generate_navier_stokes": "navier_stokes_generate",
    "generate_oc20": "oc20_generate",
    "li_forcing": "navier_stokes_solver",
    "read_causal_synthetic": "causal_synthetic",
    "solve_vorticity": "navier_stokes_solver",
    "trajectory_generator": "navier_stokes_generate",
    "write_oc20_lmdb": "oc20",
}

__all__ = [
    "CausalSyntheticDataset",
    "ClimateSet",
    "ERA5Dataset",
    "ImageClassificationDataset",
    "NavierStokesTrajectories",
    "OC20Data",
    "OC20LMDBDataset",
    "convert_oc20_lmdb",
    "gaussian_random_field",
    "generate_causal_synthetic",
    "generate_climateset",
    "generate_era5",
    "generate_navier_stokes",
    "generate_oc20",
    "li_forcing",
    "read_causal_synthetic",
    "solve_vorticity",
    "trajectory_generator",
    "write_oc20_lmdb",
]


__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULES)
