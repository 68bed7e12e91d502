"""The cheap scores of :class:`~lightning_climate.callbacks.DifficultyScores` read from training.

With ``source="training"`` no extra pass runs: a forward hook on the module that returns the
logits keeps the output of the first forward of each training step, and the scores of the step's
examples are computed from it and the batch's labels and ids. The model is in training mode
(dropout, BatchNorm batch statistics, augmented inputs) and each example is scored with the
weights it met, before the step's update, as forgetting events (Toneva et al., 2019) and dataset
cartography (Swayamdipta et al., 2020) define them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from lightning_climate.analysis.scores import output_scores
from lightning_climate.callbacks.difficulty_probe import BatchFormat, Key, Shard, check_logits
from lightning_climate.callbacks.difficulty_schedule import COSTLY_SCORES

__all__ = ["TrainingCapture", "check_whole_epochs", "training_source_problems"]


def check_whole_epochs(trainer: Trainer) -> None:
    """Refuse training loaders that skip examples in every epoch."""
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        return
    size = loader.batch_size or 1
    skipped = len(loader.sampler) % size  # type: ignore[arg-type]
    if loader.drop_last and skipped:
        raise ValueError(
            "DifficultyScores(source='training') scores every example once per epoch, but the "
            f"training DataLoader has drop_last=True and skips {skipped} examples each epoch; "
            "pass drop_last=False."
        )
    if trainer.num_training_batches < len(loader):
        raise ValueError(
            "DifficultyScores(source='training') scores every example once per epoch, but "
            f"limit_train_batches={trainer.limit_train_batches} trains on "
            f"{trainer.num_training_batches} of the {len(loader)} batches; drop the limit or "
            "use source='eval'."
        )


def training_source_problems(
    scores: Sequence[str],
    epochs: Sequence[int] | None,
    steps: Sequence[int] | None,
    split: str,
    index_key: Key | None,
    forward: Callable[[nn.Module, Tensor], Tensor] | None,
    layers: Sequence[str] | None,
    batch_size: int | None,
    transfer_hooks: bool,
    cache_batches: bool,
) -> list[str]:
    """What in these arguments cannot work with ``source="training"``, each with its fix."""
    problems = []
    costly = [n for n in COSTLY_SCORES if n in scores]
    if costly:
        problems.append(
            f"{costly} need passes of their own (per-example gradients, k-NN probes); compute "
            "them with a second DifficultyScores(source='eval', score_epochs=...)."
        )
    if steps:
        problems.append("`steps` would score the examples of one step only; use `epochs`.")
    if epochs is not None and -1 in epochs:
        problems.append("epoch -1 has no training forward; drop it from `epochs`.")
    if split != "train":
        problems.append(f"only the train split is trained on, not split={split!r}.")
    if index_key is None:
        problems.append(
            "the training loader shuffles, so the batches must carry example ids: wrap the "
            "dataset, IndexedDataset(TensorDataset(x, y)) yields (x, y, id), and pass index_key=2."
        )
    if forward is not None:
        problems.append(
            "`forward` is not called; name the submodule returning the logits with logits_module."
        )
    unused = [
        name
        for name, value in (
            ("layers", layers),
            ("batch_size", batch_size),
            ("transfer_hooks=False", not transfer_hooks),
            ("cache_batches", cache_batches),
        )
        if value
    ]
    if unused:
        problems.append(f"{unused} configure the eval pass, which this source does not run.")
    return problems


class _FirstOutput:
    """Forward hook keeping the first output while enabled (a class: hooks must pickle)."""

    def __init__(self) -> None:
        self.enabled = False
        self.output: Any = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.enabled and self.output is None:
            self.output = output.detach() if isinstance(output, Tensor) else output


class TrainingCapture:
    """Scores of the examples of this rank's training steps during one epoch.

    Args:
        batch_format: where the batches hold inputs, labels and example ids (ids are required:
            the training loader shuffles).
        logits_module: name of the submodule (``pl_module.named_modules()``) whose output is the
            ``(batch, classes)`` logits; ``None`` hooks the LightningModule itself.
        names: the score columns to keep (names of :data:`~lightning_climate.analysis.scores.OUTPUT_SCORES`).
    """

    def __init__(
        self, batch_format: BatchFormat, logits_module: str | None, names: Sequence[str]
    ) -> None:
        self.batch_format = batch_format
        self.logits_module = logits_module
        self.names = tuple(names)
        self.active = False  # capturing this epoch
        self.batches = 0  # training steps captured this epoch
        self.from_start = False  # the first captured step was the epoch's first batch
        self._hook = _FirstOutput()
        self._handle: RemovableHandle | None = None
        self._pending: tuple[Tensor, Tensor] | None = None
        self._index: list[Tensor] = []
        self._columns: dict[str, list[Tensor]] = {}

    def attach(self, pl_module: nn.Module) -> None:
        """Register the forward hook on the logits module."""
        self.detach()
        module = pl_module
        if self.logits_module is not None:
            module = dict(pl_module.named_modules())[self.logits_module]
        self._handle = module.register_forward_hook(self._hook)

    def detach(self) -> None:
        """Remove the forward hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def start_epoch(self, active: bool) -> None:
        """Forget the previous epoch's scores; capture this epoch if ``active``."""
        self.active = active
        self.batches = 0
        self.from_start = False
        self._index, self._columns = [], {}

    def start_batch(self, batch: Any, batch_idx: int) -> None:
        """Read the labels and ids of a training batch (already on the device) and listen."""
        if not self.active:
            return
        _, y, index = self.batch_format.unpack(batch)
        assert index is not None  # DifficultyScores requires index_key with this source
        if self.batches == 0:
            self.from_start = batch_idx == 0
        self._pending = (y, index)
        self._hook.output = None
        self._hook.enabled = True

    def end_batch(self, batch_idx: int) -> None:
        """Score the step's examples from the first forward output of the logits module."""
        self._hook.enabled = False
        if not self.active or self._pending is None:
            return
        y, index = self._pending
        logits, self._pending, self._hook.output = self._hook.output, None, None
        self._check(logits, y, batch_idx)
        scores = output_scores(logits, y)
        for name in self.names:
            self._columns.setdefault(name, []).append(scores[name].cpu())
        self._index.append(index.long().cpu())
        self.batches += 1

    def whole_epoch(self, trainer: Trainer, epoch: int) -> bool:
        """Whether every training step of ``epoch`` was captured; warns when not (no record)."""
        whole = self.from_start and self.batches == trainer.num_training_batches
        if trainer.world_size > 1:  # every rank must take part in the gather, or none
            whole = trainer.strategy.reduce_boolean_decision(whole, all=True)
        if not whole:
            rank_zero_warn(
                f"DifficultyScores(source='training'): no record for epoch {epoch}: its scores "
                f"come from {self.batches} of its {trainer.num_training_batches} training "
                "steps (the run resumed from a checkpoint saved inside or at the end of that "
                "epoch, or max_steps stopped it)."
            )
        return whole

    def shard(self) -> Shard:
        """This rank's scores of the epoch, in the order the examples were seen."""
        return Shard(
            index=torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long),
            columns={
                n: torch.cat(self._columns[n]) if self._index else torch.zeros(0).double()
                for n in self.names
            },
            vog=None,
            features=[],
        )

    def _check(self, logits: Any, y: Tensor, batch_idx: int) -> None:
        where = "the LightningModule" if self.logits_module is None else repr(self.logits_module)
        if logits is None:
            raise RuntimeError(
                f"DifficultyScores(source='training'): {where} was not called during training "
                f"step {batch_idx}, so no logits were seen. Set logits_module to the name of the "
                "submodule your training_step calls for the (batch, classes) logits (e.g. "
                "'model'; names from pl_module.named_modules())."
            )
        check_logits(
            logits,
            y,
            self.batch_format.target_key,
            f"the first output of {where} in a training step",
            "set logits_module to the submodule that returns them",
        )
