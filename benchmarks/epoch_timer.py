"""Wall time of each training epoch, shared by the benchmarks that train (import as ``epoch_timer``).

The benchmarks run as scripts (``python benchmarks/<name>.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["EpochTimer"]


class EpochTimer(Callback):
    """Wall time of each full epoch (training, callbacks' epoch-end work and validation).

    Register it after the callbacks whose epoch-end work should be inside the interval.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)

    def steady_mean(self) -> float:
        """Mean epoch time after the first epoch (which includes warm-up)."""
        steady = self.times[1:]
        return sum(steady) / max(len(steady), 1)
