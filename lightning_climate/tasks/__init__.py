"""LightningModules (tasks), one file per problem."""

from lightning_climate.tasks.base import BaseTask
from lightning_climate.tasks.classification import ClassificationTask
from lightning_climate.tasks.downscaling import DownscalingTask

__all__ = ["BaseTask", "ClassificationTask", "DownscalingTask"]
