"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.graph import (
    EdgeF1Score,
    EdgePrecision,
    EdgeRecall,
    StructuralHammingDistance,
    match_latents,
    permute_graph,
)
from lightning_climate.metrics.latitude_weighted_rmse import (
    LatitudeWeightedRMSE,
    latitude_weighted_mse,
    latitude_weights,
)

__all__ = [
    "EdgeF1Score",
    "EdgePrecision",
    "EdgeRecall",
    "LatitudeWeightedRMSE",
    "StructuralHammingDistance",
    "latitude_weighted_mse",
    "latitude_weights",
    "match_latents",
    "permute_graph",
]
