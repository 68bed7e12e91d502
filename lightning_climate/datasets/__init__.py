"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.era5 import ERA5Dataset, FieldNormalizer, generate_era5

__all__ = ["ERA5Dataset", "FieldNormalizer", "generate_era5"]
