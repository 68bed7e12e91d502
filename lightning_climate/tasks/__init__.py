"""LightningModules (tasks), one file per problem."""

from lightning_climate.tasks.base import BaseTask
from lightning_climate.tasks.causal_discovery import CausalDiscoveryTask
from lightning_climate.tasks.classification import ClassificationTask
from lightning_climate.tasks.downscaling import DownscalingTask
from lightning_climate.tasks.emulation import EmulationTask

__all__ = [
    "BaseTask",
    "CausalDiscoveryTask",
    "ClassificationTask",
    "DownscalingTask",
    "EmulationTask",
]
