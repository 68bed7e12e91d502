"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.climateset import ClimateSet
from lightning_climate.datasets.climateset_generate import generate_climateset

__all__ = ["ClimateSet", "generate_climateset"]
