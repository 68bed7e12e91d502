"""LightningModules (tasks), one file per problem."""

from lightning_climate.tasks.base import BaseTask
from lightning_climate.tasks.catalyst import CatalystTask

__all__ = ["BaseTask", "CatalystTask"]
