"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.catalyst import (
    EnergyForceWithinThreshold,
    EnergyMAE,
    EnergyWithinThreshold,
    ForceCosineSimilarity,
    ForceMAE,
)

__all__ = [
    "EnergyForceWithinThreshold",
    "EnergyMAE",
    "EnergyWithinThreshold",
    "ForceCosineSimilarity",
    "ForceMAE",
]
