"""LightningModules (tasks), one file per problem."""

from lightning_climate.tasks.base import BaseTask
from lightning_climate.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]
