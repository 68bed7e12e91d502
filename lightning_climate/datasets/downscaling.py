"""Low/high-resolution training pairs built from high-resolution fields by block means."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_climate.layers.constraints import block_mean

__all__ = ["BlockMeanPairs"]


class BlockMeanPairs(Dataset[dict[str, Tensor]]):
    """Dataset of ``{"lr", "hr", "index"}`` samples from a source of high-resolution fields.

    ``hr`` is the block mean of the source field at ``hr_factor`` and ``lr`` its block mean at
    ``hr_factor * lr_factor``: so the block mean of ``hr`` equals ``lr`` exactly, the relation the
    conservation constraint layers enforce.

    Args:
        fields: ``fields(i) -> Tensor`` (C, H, W) for ``i`` in ``indices``.
        indices: the source indices of this split; ``index`` in each sample is taken from them, so
            it names the same field in every split and on every rank.
        hr_factor: block size from the source grid to the ``hr`` grid.
        lr_factor: block size from the ``hr`` grid to the ``lr`` grid (the downscaling factor).
    """

    def __init__(
        self,
        fields: Callable[[int], Tensor],
        indices: Sequence[int],
        hr_factor: int,
        lr_factor: int,
    ) -> None:
        self.fields = fields
        self.indices = list(indices)
        self.hr_factor = hr_factor
        self.lr_factor = lr_factor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index = self.indices[item]
        hr = block_mean(self.fields(index), self.hr_factor)
        lr = block_mean(hr, self.lr_factor)
        return {"lr": lr, "hr": hr, "index": torch.tensor(index, dtype=torch.long)}
