"""Readers of real on-disk formats and generators of embedded data."""

from lightning_climate.datasets.causal_synthetic import (
    CausalSyntheticDataset,
    generate_causal_synthetic,
    read_causal_synthetic,
)

__all__ = ["CausalSyntheticDataset", "generate_causal_synthetic", "read_causal_synthetic"]
