"""The scoring pass of :class:`~lightning_climate.callbacks.DifficultyScores` on this rank's shard.

:class:`BatchFormat` reads input, labels and example ids from a user's batches (dicts or
``(x, y)`` tuples) and explains the fix when a batch does not fit; :func:`probe_loader` rebuilds
the scored split without shuffling (one :class:`~torch.utils.data.DistributedSampler` shard per
rank); :func:`score_shard` runs the model over it in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from lightning_climate.analysis.scores import (
    VoGAccumulator,
    functional_forward,
    grand,
    input_gradients,
    output_scores,
)

__all__ = [
    "BatchFormat",
    "Shard",
    "check_logits",
    "positions",
    "probe_loader",
    "score_shard",
    "to_device",
]

Key = str | int


@dataclass(frozen=True)
class BatchFormat:
    """Where a batch holds the input, the class labels and the example ids.

    Args:
        input_key: key (dict batches) or position (tuple batches) of the inputs.
        target_key: key or position of the integer class labels.
        index_key: key or position of a unique integer id per example; ``None`` takes the
            example's position in the dataset (the scoring pass knows it: it does not shuffle).
    """

    input_key: Key = "image"
    target_key: Key = "label"
    index_key: Key | None = "index"

    def keys(self) -> list[Key]:
        """The keys looked up in every batch."""
        keys = [self.input_key, self.target_key]
        return keys if self.index_key is None else [*keys, self.index_key]

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(inputs, labels, ids or None)`` of one batch; an error naming the fix otherwise."""
        if isinstance(batch, Mapping):
            missing = [k for k in self.keys() if k not in batch]
            if missing:
                raise KeyError(
                    f"DifficultyScores: the batch has no key(s) {missing}; it has {list(batch)}. "
                    "Set input_key and target_key to the keys of the inputs and integer labels, "
                    "and index_key to the key of a unique integer id per example, or "
                    "index_key=None to use each example's position in the dataset."
                )
            values = [batch[k] for k in self.keys()]
        elif isinstance(batch, Sequence) and not isinstance(batch, str):
            wrong = [
                k
                for k in self.keys()
                if not isinstance(k, int) or not -len(batch) <= k < len(batch)
            ]
            if wrong:
                raise TypeError(
                    f"DifficultyScores: the batches are {type(batch).__name__}s of length "
                    f"{len(batch)}, but the keys {wrong} are not positions in them. For (x, y) "
                    "batches pass input_key=0, target_key=1, index_key=None (each example's id "
                    "is then its position in the dataset)."
                )
            values = [batch[k] for k in self.keys()]  # type: ignore[index]
        else:
            raise TypeError(
                f"DifficultyScores needs dict or tuple batches, got {type(batch).__name__}."
            )
        x, y = values[0], values[1]
        if not isinstance(y, Tensor) or y.is_floating_point() or y.ndim != 1:
            raise TypeError(
                f"DifficultyScores: batch[{self.target_key!r}] must be a 1-D integer tensor of "
                f"class labels, got {_describe(y)}; set target_key to the labels' key or position."
            )
        index = values[2] if len(values) == 3 else None
        if index is not None and (
            not isinstance(index, Tensor) or index.is_floating_point() or index.shape != y.shape
        ):
            raise TypeError(
                f"DifficultyScores: batch[{self.index_key!r}] must hold one integer id per "
                f"example, got {_describe(index)}; set index_key=None to use positions instead."
            )
        return x, y, index


def check_logits(logits: Any, y: Tensor, target_key: Key, what: str, fix: str) -> None:
    """Raise unless ``logits`` are ``(batch, classes)`` for the labels ``y`` and cover their range.

    Args:
        logits: what the model gave for the batch.
        y: the batch's labels.
        target_key: where the labels are (named in the error).
        what: which output ``logits`` is, for the error.
        fix: how to get the logits instead, for the error.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != len(y):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"DifficultyScores needs (batch, classes) logits from {what}, got {shape} for a "
            f"batch of {len(y)}; {fix}."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(
            f"DifficultyScores: labels under target_key={target_key!r} range over "
            f"[{int(y.min())}, {int(y.max())}] but the model has {logits.shape[1]} classes; set "
            "target_key to the class labels."
        )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def probe_loader(
    trainer: Trainer, pl_module: LightningModule, split: str, batch_size: int | None
) -> DataLoader[Any]:
    """The split's dataset again, in order, with this rank's shard under DDP."""
    loader = _split_loader(trainer, pl_module, split)
    if isinstance(loader, Mapping):
        loader = list(loader.values())
    if isinstance(loader, Sequence):
        if len(loader) != 1:
            raise ValueError(
                f"The {split} split has {len(loader)} dataloaders; DifficultyScores scores one "
                "dataset. Choose a split with a single dataloader."
            )
        loader = loader[0]
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "DifficultyScores needs a map-style dataset (with __len__ and __getitem__) so that "
            "every example has a fixed index; got an IterableDataset."
        )
    sampler = None
    if trainer.world_size > 1:
        # rank r scores r, r+W, ...; every rank gets ceil(N / W) examples (the padding repeats
        # the first ones and is dropped by index), so the shards can be gathered as equal tensors
        sampler = DistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size or loader.batch_size or 1,
        shuffle=False,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        # own generator: building an iterator must not consume the global RNG of training
        generator=torch.Generator().manual_seed(0),
    )


def _split_loader(trainer: Trainer, pl_module: LightningModule, split: str) -> Any:
    """The split's loader(s): from the datamodule's or module's hook, else those given to ``fit``."""
    hook = f"{split}_dataloader"
    for source in (trainer.datamodule, pl_module):
        if source is not None and is_overridden(hook, source):
            return getattr(source, hook)()
    # loaders passed to trainer.fit(model, train_dataloaders=...) are known once fit has set them up
    attached = {
        "train": trainer.train_dataloader,
        "val": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
    }[split]
    if attached is None:
        raise ValueError(
            f"DifficultyScores found no {split} dataloader: give it through a LightningDataModule "
            f"or the module's {hook}(), or to trainer.fit, or choose another `split`."
        )
    return attached


def positions(loader: DataLoader[Any]) -> Tensor:
    """Dataset positions of the examples ``loader`` yields, in order."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return torch.tensor(list(iter(sampler)), dtype=torch.long)
    return torch.arange(len(loader.dataset), dtype=torch.long)  # type: ignore[arg-type]


@dataclass
class Shard:
    """Scores of this rank's examples: ids, score columns, VoG gradients, probe features."""

    index: Tensor
    columns: dict[str, Tensor]
    vog: Tensor | None
    features: list[Tensor]


def to_device(trainer: Trainer, pl_module: LightningModule, batch: Any, hooks: bool) -> Any:
    """Move a batch to the module's device, through the batch transfer hooks if ``hooks``."""
    if hooks:
        return trainer.strategy.batch_to_device(batch, pl_module.device)
    if isinstance(batch, Mapping):
        return {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    if isinstance(batch, Sequence):
        return [v.to(pl_module.device) if isinstance(v, Tensor) else v for v in batch]
    return batch


@torch.no_grad()
def score_shard(
    trainer: Trainer,
    pl_module: LightningModule,
    batches: Iterable[Any],
    loader: DataLoader[Any],
    batch_format: BatchFormat,
    forward: Callable[[nn.Module, Tensor], Tensor],
    active: Sequence[str],
    layers: Sequence[str],
    transfer_hooks: bool,
    grand_chunk_size: int | None,
    grand_parameters: Sequence[str] | None,
) -> Shard:
    """One eval-mode pass over ``batches`` computing the one-pass scores and the ``active`` costly ones."""
    wrapper = functional_forward(pl_module, forward)
    features: dict[str, list[Tensor]] = {name: [] for name in layers}
    hooks = [_FeatureHook(features[name]) for name in layers]
    handles = []
    if "prediction_depth" in active:
        modules = dict(pl_module.named_modules())
        handles = [modules[n].register_forward_hook(h) for n, h in zip(layers, hooks, strict=True)]
    order = positions(loader) if batch_format.index_key is None else None
    indices: list[Tensor] = []
    columns: dict[str, list[Tensor]] = {}
    vog_grads: list[Tensor] = []
    seen = 0
    try:
        for batch in batches:
            x, y, idx = batch_format.unpack(to_device(trainer, pl_module, batch, transfer_hooks))
            if idx is None:
                assert order is not None
                idx = order[seen : seen + len(y)]
            seen += len(y)
            for hook in hooks:
                hook.enabled = True
            logits = wrapper(x)
            for hook in hooks:  # GraNd's and VoG's extra forwards must not be recorded
                hook.enabled = False
            for name, value in output_scores(logits, y).items():
                columns.setdefault(name, []).append(value.cpu())
            columns.setdefault("prediction", []).append(logits.argmax(1).double().cpu())
            columns.setdefault("target", []).append(y.double().cpu())
            if "grand" in active:
                with torch.enable_grad():
                    g = grand(
                        wrapper, x, y, chunk_size=grand_chunk_size, parameters=grand_parameters
                    )
                columns.setdefault("grand", []).append(g.cpu())
            if "vog" in active:
                g = input_gradients(wrapper, x, y)
                vog_grads.append(VoGAccumulator.reduce_channels(g).cpu())
            indices.append(idx.long().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return Shard(
        index=torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        columns={k: torch.cat(v) for k, v in columns.items()},
        vog=torch.cat(vog_grads) if vog_grads else None,
        features=[torch.cat(features[name]) for name in layers] if handles else [],
    )


class _FeatureHook:
    """Forward hook storing a module's output on the CPU (picklable, unlike a closure)."""

    def __init__(self, store: list[Tensor]) -> None:
        self.store = store
        self.enabled = False

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self.enabled:
            self.store.append(output.detach().flatten(1).cpu())
