"""Callback that logs the conservation violation of any super-resolution model on validation data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_climate.metrics.constraint_violation import ConstraintViolation

__all__ = ["ConstraintMonitor"]


class ConstraintMonitor(Callback):
    """Log ``<prefix>_mean`` and ``<prefix>_max`` of ``|block_mean(pred) - lr|`` each validation epoch.

    For users whose own models have no constraint layer: it shows how far the model's predictions
    are from conserving the low-resolution input. Batches must be mappings holding the
    low-resolution input under ``lr_key``. The prediction, computed without gradients, is
    ``pl_module(batch[lr_key])``; or ``pl_module(lr, factor)`` when ``hr_key`` is given, with the
    factor between the ``lr`` and ``hr`` grids (for tasks such as
    :class:`~lightning_climate.tasks.DownscalingTask`); or ``predict_fn(pl_module, batch)``; or
    the value under ``output_key`` of the mapping returned by ``validation_step`` (no second
    forward pass). Metrics are
    synchronised over DDP ranks, and the value of every epoch is kept in :attr:`history`, which
    is saved in checkpoints.

    Args:
        lr_key: batch key of the low-resolution input (B, C, h, w).
        hr_key: batch key of the high-resolution target, to call ``pl_module(lr, factor)``.
        predict_fn: module-level callable ``(pl_module, batch) -> prediction`` (picklable for DDP).
        output_key: key of the prediction in the mapping returned by ``validation_step``.
        prefix: name prefix of the logged values.
    """

    def __init__(
        self,
        lr_key: str = "lr",
        hr_key: str | None = None,
        predict_fn: Callable[[LightningModule, Mapping[str, Tensor]], Tensor] | None = None,
        output_key: str | None = None,
        prefix: str = "val_constraint_violation",
    ) -> None:
        if not lr_key or not prefix:
            raise ValueError("lr_key and prefix must be non-empty strings.")
        if sum(x is not None for x in (hr_key, predict_fn, output_key)) > 1:
            raise ValueError(
                "give at most one of hr_key, predict_fn and output_key: hr_key calls "
                "pl_module(lr, factor), predict_fn computes the prediction itself, output_key "
                "reuses the one returned by validation_step."
            )
        if predict_fn is not None and not callable(predict_fn):
            raise TypeError(f"predict_fn must be callable, got {type(predict_fn).__name__}.")
        self.lr_key = lr_key
        self.hr_key = hr_key
        self.predict_fn = predict_fn
        self.output_key = output_key
        self.prefix = prefix
        self.mean = ConstraintViolation("mean")
        self.max = ConstraintViolation("max")
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move the metrics to the module's device (a callback's metrics are not child modules)."""
        self.mean.to(pl_module.device)
        self.max.to(pl_module.device)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start each epoch from empty states, on the module's current device."""
        self.setup(trainer, pl_module, "validate")
        self.mean.reset()
        self.max.reset()

    def _prediction(
        self, pl_module: LightningModule, outputs: Any, batch: Mapping[str, Tensor]
    ) -> Tensor:
        if self.output_key is not None:
            if not isinstance(outputs, Mapping) or self.output_key not in outputs:
                raise KeyError(
                    f"ConstraintMonitor(output_key={self.output_key!r}) needs validation_step to "
                    f"return a mapping with that key; it returned {type(outputs).__name__}. Return "
                    "the prediction from validation_step, or drop output_key to recompute it."
                )
            return outputs[self.output_key].detach()
        with torch.no_grad():
            if self.predict_fn is not None:
                return self.predict_fn(pl_module, batch)
            lowres = batch[self.lr_key]
            if self.hr_key is None:
                return pl_module(lowres)
            if self.hr_key not in batch:
                raise KeyError(f"the batch has no {self.hr_key!r}; set hr_key to the target's key.")
            factor = batch[self.hr_key].shape[-1] / lowres.shape[-1]
            return pl_module(lowres, int(factor) if factor.is_integer() else factor)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the violation with this batch's prediction."""
        if not isinstance(batch, Mapping) or self.lr_key not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(
                f"ConstraintMonitor expects dict batches with the low-resolution input under "
                f"{self.lr_key!r}; got {keys}. Set lr_key to the right key."
            )
        lowres = batch[self.lr_key]
        pred = self._prediction(pl_module, outputs, batch)
        self.mean.update(pred, lowres)
        self.max.update(pred, lowres)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Synchronise, log and remember the epoch's violation (runs on every rank)."""
        if trainer.sanity_checking:
            return
        values = {"mean": self.mean.compute(), "max": self.max.compute()}
        for name, value in values.items():
            pl_module.log(f"{self.prefix}_{name}", value.float(), sync_dist=False)
        self.history.append(
            {"epoch": float(trainer.current_epoch), **{k: float(v) for k, v in values.items()}}
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the per-epoch history of logged violations."""
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history saved by :meth:`state_dict`."""
        self.history = [dict(h) for h in state_dict["history"]]
