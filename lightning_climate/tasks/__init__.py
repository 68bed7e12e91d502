"""LightningModules (tasks), one file per problem."""

from lightning_climate.tasks.base import BaseTask

__all__ = ["BaseTask"]
