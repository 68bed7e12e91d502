"""Collect the ranks' score shards on rank 0, the only rank that writes.

Only rank 0 ever holds every example's scores: the other ranks send their shard and keep nothing,
so the memory of a rank does not grow with the world size (``all_gather`` would put all examples
on every rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

__all__ = ["first_occurrence", "gather_rows_to_rank_zero", "gather_to_rank_zero"]


def gather_to_rank_zero(
    trainer: Trainer, pl_module: LightningModule, shard: Tensor
) -> Tensor | None:
    """Concatenate every rank's ``shard`` (rank order) on rank 0; ``None`` on the other ranks.

    Every rank must call it with a shard of the same shape: the scoring pass's
    :class:`~torch.utils.data.DistributedSampler` pads the ranks to equal sizes.
    """
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return shard
    # NCCL gathers CUDA tensors only; the module's device is right for every backend
    local = shard.to(pl_module.device).contiguous()
    parts = (
        [torch.empty_like(local) for _ in range(trainer.world_size)]
        if trainer.is_global_zero
        else None
    )
    dist.gather(local, parts, dst=0)
    return None if parts is None else torch.cat([p.cpu() for p in parts])


def gather_rows_to_rank_zero(
    trainer: Trainer, pl_module: LightningModule, rows: Tensor
) -> Tensor | None:
    """Like :func:`gather_to_rank_zero` for shards whose number of rows differs between ranks.

    The training source's shards hold the examples each rank trained on, which need not be equally
    many (e.g. a user's sampler); each rank pads its shard to the longest and rank 0 cuts the
    padding off again.
    """
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return rows
    count = torch.tensor([len(rows)], device=pl_module.device)
    longest = int(trainer.strategy.reduce(count.clone(), reduce_op="max"))
    counts = gather_to_rank_zero(trainer, pl_module, count)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows.cpu()
    parts = gather_to_rank_zero(trainer, pl_module, padded)
    if parts is None or counts is None:
        return None
    return torch.cat(
        [parts[r * longest : r * longest + int(n)] for r, n in enumerate(counts.tolist())]
    )


def first_occurrence(index: Tensor) -> Tensor:
    """Positions of the first occurrence of every distinct value of ``index``, in sorted order."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[keep]
