"""Readers of real on-disk formats and generators of embedded data."""

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
