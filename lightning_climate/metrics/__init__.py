"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.latitude_weighted_rmse import (
    LatitudeWeightedRMSE,
    latitude_weighted_mse,
    latitude_weights,
)

__all__ = ["LatitudeWeightedRMSE", "latitude_weighted_mse", "latitude_weights"]
