"""PyG BaseTransforms for graph construction and rewiring."""

from lightning_climate.transforms.pbc import RadiusGraphPBC, radius_graph_pbc
from lightning_climate.transforms.rewiring import (
    OneSupernodePerAtomType,
    OneSupernodePerGraph,
    RemoveAdsorbateCatalystEdges,
    RemoveTag0,
)

__all__ = [
    "OneSupernodePerAtomType",
    "OneSupernodePerGraph",
    "RadiusGraphPBC",
    "RemoveAdsorbateCatalystEdges",
    "RemoveTag0",
    "radius_graph_pbc",
]
