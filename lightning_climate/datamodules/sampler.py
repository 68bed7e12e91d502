"""A training loader whose order depends only on (seed, epoch, rank) and that resumes mid-epoch.

PyTorch's default shuffled loader draws its permutation and its worker seeds from the global
torch generator when an epoch starts, so a run resumed from a checkpoint cannot draw the same
order unless that generator is restored at exactly the same point, and a checkpoint written
mid-epoch cannot skip the batches already seen. :class:`ResumableSampler` shuffles like
:class:`~torch.utils.data.DistributedSampler` (permutation seeded by ``seed + epoch``, the order
Lightning's own DDP sampler uses), and :class:`ResumableDataLoader` counts the batches it yields and
exposes ``state_dict``/``load_state_dict``, which Lightning's fit loop saves in every checkpoint and
loads before the first batch of a resumed run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

__all__ = ["ResumableDataLoader", "ResumableSampler"]

T = TypeVar("T")


def _default_shuffle_seed() -> int:
    """The seed Lightning gives its own DDP samplers: ``seed_everything``'s seed, else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


class ResumableSampler(DistributedSampler[T]):
    """:class:`~torch.utils.data.DistributedSampler` that can start an epoch after its first samples.

    The order of epoch ``e`` on rank ``r`` is a function of ``(seed, e, r)`` only (it never reads the
    global random state), identical to the order Lightning's automatic DDP sampler would give.
    With one process it is simply a seeded shuffle. Lightning leaves it in place under DDP (it is
    a ``DistributedSampler``), so build it where the ranks are known (``train_dataloader``) or pass
    them.

    Args:
        dataset: the map-style dataset to sample from.
        num_replicas: number of processes; ``None`` reads ``torch.distributed`` (1 when it is
            not initialised).
        rank: this process' global rank; ``None`` reads ``torch.distributed`` (0 when not
            initialised).
        shuffle: whether each epoch is a fresh permutation.
        seed: seed of the permutations; ``None`` uses ``seed_everything``'s seed
            (``PL_GLOBAL_SEED``), else 0.
        drop_last: drop the tail instead of padding it so every rank gets as many samples.
    """

    def __init__(
        self,
        dataset: Dataset[T],
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        seed = _default_shuffle_seed() if seed is None else seed
        super().__init__(dataset, num_replicas, rank, shuffle, seed, drop_last)
        #: position (in this rank's order of the current epoch) where the next iteration starts.
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; a new epoch starts from its first sample."""
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[T]:
        """This rank's indices of the current epoch, from :attr:`start` (which then returns to 0)."""
        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
            if (world, rank) != (self.num_replicas, self.rank):
                raise RuntimeError(
                    f"ResumableSampler was built for rank {self.rank} of {self.num_replicas} "
                    f"process(es) but runs on rank {rank} of {world}; every rank would read the "
                    "wrong share of the data. Build it inside `train_dataloader()` (after the "
                    "processes start) or pass num_replicas and rank."
                )
        start, self.start = self.start, 0
        return iter(list(super().__iter__())[start:])

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and the position the next iteration starts at."""
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore :meth:`state_dict`: the next iteration continues that epoch at ``start``."""
        self.seed = int(state_dict["seed"])
        self.epoch = int(state_dict["epoch"])
        self.start = int(state_dict["start"])


class ResumableDataLoader(DataLoader[T]):
    """DataLoader over a :class:`ResumableSampler` that Lightning checkpoints and resumes mid-epoch.

    It counts the batches it yields in the current epoch; :meth:`state_dict` (saved by Lightning's
    fit loop in every checkpoint, since the loader has ``state_dict``/``load_state_dict``) records
    the epoch and the samples already seen, and :meth:`load_state_dict` makes the next iteration
    skip them. Worker processes are seeded from ``(seed, epoch, rank)`` through the loader's own
    generator (reseeded at each epoch, also when you pass one), so workers draw the same numbers
    in a resumed run and the loader never touches the global generator.

    Takes :class:`~torch.utils.data.DataLoader`'s arguments with ``sampler=ResumableSampler(...)``
    (``shuffle=True`` is refused: its order comes from the global generator). With another
    sampler, such as the ``SequentialSampler`` Lightning swaps in for ``overfit_batches``, it is a
    plain DataLoader with an empty state. Random draws inside persistent workers
    (``persistent_workers=True``) continue across epochs and cannot be saved: draws inside
    workers are exact after a resume only at epoch boundaries and without persistent workers.
    """

    def __init__(self, dataset: Dataset[T], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, *args, **kwargs)
        if isinstance(self.sampler, RandomSampler):
            raise TypeError(
                "ResumableDataLoader shuffles with `sampler=ResumableSampler(dataset)`; "
                "`shuffle=True` (a RandomSampler) draws its order from the global generator and "
                "cannot resume. Pass the sampler instead of shuffle=True."
            )
        self._seen = 0
        self._seen_epoch = -1

    def __iter__(self) -> Iterator[Any]:
        """Batches of the sampler's current epoch from its start position, counting them."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler) or self.batch_size is None:
            yield from super().__iter__()
            return
        assert self.generator is not None
        words = np.random.SeedSequence([sampler.seed, sampler.epoch, sampler.rank])
        self.generator.manual_seed(int(words.generate_state(1, dtype=np.uint64)[0]))
        self._seen, self._seen_epoch = sampler.start, sampler.epoch
        for batch in super().__iter__():
            self._seen = min(self._seen + self.batch_size, len(sampler))
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The sampler's seed and epoch, and how many of this rank's samples the epoch has used."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return {}
        # before the first batch of a new epoch, the count still belongs to the previous one
        seen = self._seen if self._seen_epoch == sampler.epoch else sampler.start
        return {"seed": sampler.seed, "epoch": sampler.epoch, "start": seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the saved epoch after its seen samples (a finished epoch is left as is)."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler) or not state_dict:
            return
        sampler.load_state_dict(state_dict)
        self._seen, self._seen_epoch = sampler.start, sampler.epoch
