"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.causal_synthetic import (
    CausalSyntheticDataset,
    generate_causal_synthetic,
    read_causal_synthetic,
)
from lightning_climate.datasets.climateset import ClimateSet
from lightning_climate.datasets.climateset_generate import generate_climateset

__all__ = [
    "CausalSyntheticDataset",
    "ClimateSet",
    "generate_causal_synthetic",
    "generate_climateset",
    "read_causal_synthetic",
]
