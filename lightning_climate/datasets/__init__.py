"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.oc20 import (
    OC20Data,
    OC20LMDBDataset,
    convert_oc20_lmdb,
    write_oc20_lmdb,
)
from lightning_climate.datasets.oc20_generate import generate_oc20

__all__ = [
    "OC20Data",
    "OC20LMDBDataset",
    "convert_oc20_lmdb",
    "generate_oc20",
    "write_oc20_lmdb",
]
