"""The package's LightningCLI: a top-level ``optimizer:`` section works, SAM included.

LightningCLI's automatic optimizer configuration builds the top-level ``optimizer:`` before the
model is attached to a Trainer and replaces the module's ``configure_optimizers``. This subclass
binds a :class:`~lightning_climate.optim.SAM` optimizer to the module when Lightning asks for
the optimizers, so it is ready before the first step (``16-mixed`` needs that).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI, LRSchedulerTypeUnion
from torch.optim import Optimizer

from lightning_climate.optim.sam import SAM

__all__ = ["ClimateCLI"]


class ClimateCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` that binds a top-level SAM to the model."""

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule,
        optimizer: Optimizer,
        lr_scheduler: LRSchedulerTypeUnion | None = None,
    ) -> Any:
        """LightningCLI's optimizer and scheduler, with a SAM optimizer bound to the module."""
        if isinstance(optimizer, SAM):
            optimizer.bind(lightning_module)
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)
