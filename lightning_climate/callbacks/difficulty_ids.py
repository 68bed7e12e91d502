"""Give every example of a user's dataset an id, so per-example scores can follow it anywhere.

:class:`~lightning_climate.callbacks.DifficultyScores` pairs each score with an example id. Its
eval source can use positions (``index_key=None``: its own pass does not shuffle), but the
training source sees the examples in the training loader's shuffled order, so the batches must
carry the ids: ``IndexedDataset(TensorDataset(x, y))`` yields ``(x, y, id)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset[Any]):
    """A map-style dataset whose samples carry their position as the example id.

    Tuple samples ``(x, y)`` become ``(x, y, id)`` (then ``index_key=2``); dict samples gain
    ``key: id`` (then ``index_key=key``). The id is an int64 scalar tensor, so the default
    collate function batches it into a ``(B,)`` tensor.

    Args:
        dataset: a map-style dataset (``__len__`` and ``__getitem__``) of tuples or dicts.
        key: the dict key of the id (dict samples only).
    """

    def __init__(self, dataset: Dataset[Any], key: str = "index") -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                "IndexedDataset needs a map-style dataset (with __len__ and __getitem__): an "
                f"example's id is its position; got {type(dataset).__name__}."
            )
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        sample = self.dataset[i]
        index = torch.tensor(i, dtype=torch.long)
        if isinstance(sample, Mapping):
            if self.key in sample:
                raise KeyError(
                    f"IndexedDataset: the samples already have a {self.key!r} entry; pass "
                    "another `key`, or use that entry as index_key without the wrapper."
                )
            return {**sample, self.key: index}
        if isinstance(sample, tuple | list):
            return (*sample, index)
        raise TypeError(
            f"IndexedDataset wraps datasets of tuples or dicts, got a {type(sample).__name__} "
            f"sample; return (x, y) from {type(self.dataset).__name__}.__getitem__."
        )
