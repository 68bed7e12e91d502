"""The ``lightning-climate`` LightningCLI: short class names, top-level SAM, a summary after fit.

LightningCLI's automatic optimizer configuration builds the top-level ``optimizer:`` before the
model is attached to a Trainer and replaces the module's ``configure_optimizers``; this subclass
binds a :class:`~lightning_climate.optim.SAM` optimizer to the module when Lightning asks for the
optimizers, so it is ready before the first step (``16-mixed`` needs that).

Importing this module imports Lightning, torch and every task, datamodule and callback of the
package (so YAML can name them by their short class name); :mod:`lightning_climate.main` imports it
only when a subcommand runs, which keeps ``lightning-climate --help`` fast.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar, Timer
from lightning.pytorch.cli import LightningCLI, LRSchedulerTypeUnion
from torch.optim import Optimizer

# Imported for their side effect: the classes become visible to jsonargparse by short name.
import lightning_climate.callbacks
import lightning_climate.datamodules
import lightning_climate.tasks
from lightning_climate.optim.sam import SAM

__all__ = ["ClimateCLI", "available_cores", "final_metrics_table", "stop_reason"]

# The datamodules package imports its classes on first use; import them all now.
for _name in lightning_climate.datamodules.__all__:
    getattr(lightning_climate.datamodules, _name)

#: format of metric values in the rich progress bar (Lightning's ".3f" shows a loss of 4e-4 as 0.000)
PROGRESS_BAR_FORMAT = ".4g"


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota != "max":
        cores = min(cores, max(1, int(quota) // int(period)))
    return cores


def stop_reason(trainer: Trainer) -> str:
    """One sentence on why ``trainer.fit`` ended, with the epochs done and what to change."""
    done = f"after {trainer.current_epoch} of max_epochs={trainer.max_epochs} epochs"
    if trainer.interrupted:
        return f"Training was interrupted {done}."
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = None if timer is None else timer.time_remaining()
    if remaining is not None and remaining <= 0:
        limit = timedelta(seconds=round(timer.time_elapsed() + remaining))
        return (
            f"Training stopped because max_time ({limit}) was reached {done}: the metrics are "
            "those of a shorter run. Raise trainer.max_time (or set it to null) to train all "
            "epochs."
        )
    stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
    if stopper is not None and stopper.stopped_epoch > 0:
        return f"Training stopped early ({stopper.monitor} stopped improving) {done}."
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return f"Training stopped because max_steps={trainer.max_steps} was reached {done}."
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        return f"Training finished: max_epochs={trainer.max_epochs} reached."
    return f"Training stopped {done} (a callback or the model set trainer.should_stop)."


def final_metrics_table(metrics: dict[str, Any]) -> str:
    """A two-column text table of the scalar metrics, sorted by name ("" if there are none)."""
    rows = [
        (name, float(value))
        for name, value in sorted(metrics.items())
        if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1)
    ]
    if not rows:
        return ""
    width = max(len("metric"), *(len(name) for name, _ in rows))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name:<{width}}  {value:.6g}" for name, value in rows]
    return "\n".join(lines)


class ClimateCLI(LightningCLI):
    """LightningCLI that binds a top-level SAM, shows readable numbers and summarises ``fit``."""

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

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer; show metrics in the rich progress bar with 4 significant digits."""
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar) and bar.theme.metrics_format == ".3f":
            bar.theme = dataclasses.replace(bar.theme, metrics_format=PROGRESS_BAR_FORMAT)
        return trainer

    def after_fit(self) -> None:
        """Print why training stopped and the last logged metrics (rank 0 only)."""
        if not self.trainer.is_global_zero:
            return
        print(stop_reason(self.trainer))
        table = final_metrics_table(dict(self.trainer.callback_metrics))
        if table:
            print(f"Last logged metrics:\n{table}")
