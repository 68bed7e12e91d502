"""Low/high-resolution training pairs built from high-resolution fields by block means."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["BlockMeanPairs", "block_mean"]


def block_mean(x: Tensor, factor: int) -> Tensor:
    """Mean over non-overlapping ``factor``×``factor`` blocks of the last two axes of ``x``.

    Raises:
        ValueError: if a side of ``x`` is not divisible by ``factor``; crop the field first.
    """
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}.")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(
            f"a field of {h}x{w} pixels cannot be split into {factor}x{factor} blocks; crop it "
            f"to a multiple of {factor} or choose a factor that divides both sides."
        )
    if factor == 1:
        return x
    lead = x.shape[:-2]
    return F.avg_pool2d(x.reshape(-1, 1, h, w), factor).reshape(*lead, h // factor, w // factor)


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
