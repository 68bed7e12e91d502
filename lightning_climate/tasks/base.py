"""Base class of every task (LightningModule) of the package.

Tasks receive their optimizer and scheduler as callables (dependency injection), so a YAML file
sets them under ``model.init_args.optimizer`` and wrappers such as SAM can be chosen without code.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_climate.optim.sam import SAM

__all__ = ["BaseTask"]


class BaseTask(LightningModule):
    """LightningModule that builds its optimizer and scheduler from injected callables.

    Args:
        optimizer: called with the parameters to optimise, e.g. ``torch.optim.AdamW`` or
            ``functools.partial(torch.optim.SGD, lr=0.1)``; YAML sets it as
            ``{class_path: torch.optim.AdamW, init_args: {lr: 1e-3}}``.
        lr_scheduler: optional, called with the optimizer. A
            :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` monitors :attr:`monitor`.
    """

    #: metric watched by ReduceLROnPlateau, and a sensible default for checkpoints.
    monitor: ClassVar[str] = "val_loss"
    #: whether :attr:`monitor` should be minimised or maximised.
    mode: ClassVar[str] = "min"

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def configure_optimizers(self) -> Any:
        """Build the injected optimizer over all trainable parameters, and the scheduler if any.

        A :class:`~lightning_climate.optim.SAM` optimizer is bound to this module.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(params)
        if isinstance(optimizer, SAM):
            optimizer.bind(
                self
            )  # SAM-ON's parameter choice and BatchNorm statistics need the model
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
