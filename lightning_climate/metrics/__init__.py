"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.graph import (
    EdgeF1Score,
    EdgePrecision,
    EdgeRecall,
    StructuralHammingDistance,
    match_latents,
    permute_graph,
)

__all__ = [
    "EdgeF1Score",
    "EdgePrecision",
    "EdgeRecall",
    "StructuralHammingDistance",
    "match_latents",
    "permute_graph",
]
