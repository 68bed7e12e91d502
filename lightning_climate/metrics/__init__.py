"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.constraint_violation import ConstraintViolation
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
from lightning_climate.metrics.relative_l2 import RelativeL2Error, relative_l2_error

__all__ = [
    "ConstraintViolation",
    "EdgeF1Score",
    "EdgePrecision",
    "EdgeRecall",
    "LatitudeWeightedRMSE",
    "RelativeL2Error",
    "StructuralHammingDistance",
    "latitude_weighted_mse",
    "latitude_weights",
    "match_latents",
    "permute_graph",
    "relative_l2_error",
]
