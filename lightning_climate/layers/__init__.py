"""Neural network layers, such as physical constraint layers."""

from lightning_climate.layers.normalization import MinMaxNormalizer

__all__ = ["MinMaxNormalizer"]
