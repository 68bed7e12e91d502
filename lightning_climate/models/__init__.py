"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.catalyst import CatalystModel
from lightning_climate.models.dimenet import DimeNetPPBackbone
from lightning_climate.models.embedding import PhysEmbedding
from lightning_climate.models.heads import EnergyHead, ForceHead
from lightning_climate.models.schnet import SchNetBackbone

__all__ = [
    "CatalystModel",
    "DimeNetPPBackbone",
    "EnergyHead",
    "ForceHead",
    "PhysEmbedding",
    "SchNetBackbone",
]
