"""Save what decides a run's random numbers in each checkpoint, so a resumed run continues exactly.

Lightning restores weights, optimizer, schedulers and loop counters, but not the global random
generators: a resumed run shuffles, drops out and augments with other numbers than the run it
continues. :class:`ExactResume` stores the torch (CPU and CUDA), numpy and python generator
states of every rank when a checkpoint is written and puts them back at ``on_fit_start`` of the
resumed run. Nothing between that hook and the first training batch draws random numbers (the
sanity check runs under :func:`~lightning.pytorch.utilities.seed.isolate_rng`), and in the
uninterrupted run nothing draws between the checkpoint and the next epoch's first batch, so both
runs draw the same sequence from there on.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader

__all__ = ["ExactResume", "collect_rng_states", "restore_rng_states"]


def collect_rng_states() -> dict[str, Any]:
    """This process' torch, CUDA, numpy and python random states as tensors and numbers.

    Only tensors, numbers and ``None``, so checkpoints holding them load with
    ``torch.load(weights_only=True)``. CUDA states are read only once CUDA is initialised (before
    that no CUDA random numbers were drawn).
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set this process' generators to ``states`` from :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    cuda_states = states["torch.cuda"]
    if cuda_states:
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"ExactResume: the checkpoint holds the random states of {len(cuda_states)} CUDA "
                f"devices but this process sees {torch.cuda.device_count()}; CUDA random states "
                "are not restored, so GPU random draws (dropout on the GPU) differ from the run "
                "that wrote it. Resume with the same visible devices (CUDA_VISIBLE_DEVICES).",
                stacklevel=2,
            )
        else:
            torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(int(v) for v in python_state["state"].tolist()),
            python_state["gauss_next"],
        )
    )


def _same_states(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`collect_rng_states` results are the same generator states."""
    return (
        torch.equal(a["torch"], b["torch"])
        and len(a["torch.cuda"]) == len(b["torch.cuda"])
        and all(torch.equal(x, y) for x, y in zip(a["torch.cuda"], b["torch.cuda"], strict=True))
        and torch.equal(a["numpy"]["keys"], b["numpy"]["keys"])
        and a["numpy"]["pos"] == b["numpy"]["pos"]
        and a["numpy"]["has_gauss"] == b["numpy"]["has_gauss"]
        and torch.equal(a["python"]["state"], b["python"]["state"])
        and a["python"]["gauss_next"] == b["python"]["gauss_next"]
    )


def _gather_per_rank(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``states`` in rank order (a collective: all ranks write checkpoints together)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [states]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return gathered


class ExactResume(Callback):
    """Make a run resumed from a checkpoint draw the random numbers of the run it continues.

    Add it to the Trainer of both runs; the package's tasks add it themselves. It saves the global
    torch (CPU and CUDA), numpy and python random states of every rank in each checkpoint and
    restores each rank's own states when fit resumes from one, so shuffling with the default
    sampler, dropout and random augmentation (in the main process, or in workers that are not
    persistent) continue bit for bit from checkpoints written at the end of an epoch.

    A checkpoint written mid-epoch (``ModelCheckpoint(every_n_train_steps=...)``, or validation
    inside the epoch) resumes exactly only with a train loader that can skip the batches it already
    gave, such as :class:`~lightning_climate.datamodules.ResumableDataLoader` (what the package's
    datamodules use); with another loader the callback warns when the run resumes. It also warns
    when the checkpoint has no random states, when the number of processes changed, when the
    train loader keeps persistent workers (their random streams cannot be saved), and, in the run
    that writes them, when random numbers are drawn between an epoch-end checkpoint and the next
    epoch (a resumed run would not repeat them).
    """

    def __init__(self) -> None:
        self._trainer: Trainer | None = None
        self._loaded: dict[str, Any] | None = None
        self._fit_started = False
        # this rank's states in the last epoch-end checkpoint, checked when the next epoch starts
        self._saved_at_epoch_end: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Keep the trainer: :meth:`state_dict` needs the ranks and the loop's position."""
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Every rank's random states, and whether the checkpoint is written mid-epoch."""
        mine = collect_rng_states()
        state: dict[str, Any] = {
            "rng": _gather_per_rank(mine),
            "epoch": 0,
            "batches": 0,
            "mid_epoch": False,
        }
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            state["epoch"] = trainer.current_epoch
            state["batches"] = progress.processed
            state["mid_epoch"] = 0 < progress.processed < trainer.num_training_batches
            # written after the epoch's last batch was completed (not from on_train_batch_end,
            # whose epoch-end validation a resumed run repeats)
            if not state["mid_epoch"] and progress.completed == progress.processed:
                self._saved_at_epoch_end = mine
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved states until fit starts (restore now if it already has)."""
        self._loaded = state_dict
        if self._fit_started and self._trainer is not None:
            self._restore(self._trainer)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restore this rank's random states if the run resumes from a checkpoint that has them."""
        self._fit_started = True
        if self._loaded is not None:
            self._restore(trainer)
        elif trainer.ckpt_path is not None:
            warnings.warn(
                f"ExactResume: the checkpoint {trainer.ckpt_path} holds no random states (it was "
                "written by a Trainer without the ExactResume callback), so the resumed run draws "
                "other random numbers than an uninterrupted one would. Write the checkpoints with "
                "ExactResume in the Trainer's callbacks.",
                stacklevel=2,
            )

    def _restore(self, trainer: Trainer) -> None:
        assert self._loaded is not None
        per_rank = self._loaded["rng"]
        if len(per_rank) != trainer.world_size:
            warnings.warn(
                f"ExactResume: the checkpoint was written by {len(per_rank)} process(es) and the "
                f"run resumes with {trainer.world_size}; random states are not restored, so the "
                "run draws other random numbers than an uninterrupted one would. Resume with "
                f"devices x num_nodes = {len(per_rank)} for an exact continuation.",
                stacklevel=2,
            )
            return
        restore_rng_states(per_rank[trainer.global_rank])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """On resume, warn about what in the train loader cannot continue exactly."""
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        loaders = trainer.train_dataloader
        flattened = CombinedLoader(loaders).flattened if loaders is not None else []
        if loaded["mid_epoch"] and not all(hasattr(dl, "load_state_dict") for dl in flattened):
            warnings.warn(
                f"ExactResume: resuming from a checkpoint written mid-epoch (epoch "
                f"{loaded['epoch']}, after {loaded['batches']} batches) with a train loader that "
                "cannot skip the batches it already gave, so the rest of this epoch sees other "
                "batches than an uninterrupted run would. Write checkpoints at epoch ends, or use "
                "lightning_climate.datamodules.ResumableDataLoader with a ResumableSampler.",
                stacklevel=2,
            )
        persistent = [
            dl
            for dl in flattened
            if getattr(dl, "num_workers", 0) > 0 and getattr(dl, "persistent_workers", False)
        ]
        if persistent:
            warnings.warn(
                "ExactResume: the train loader keeps persistent workers; their random streams run "
                "on across epochs and are not in the checkpoint, so random draws inside the "
                "dataset (augmentation in workers) differ from an uninterrupted run. Set "
                "persistent_workers=False for an exact resume.",
                stacklevel=2,
            )
        if loaded["mid_epoch"] and any(getattr(dl, "num_workers", 0) > 0 for dl in flattened):
            warnings.warn(
                "ExactResume: resuming mid-epoch with num_workers > 0: the workers' random streams "
                "of the interrupted epoch are not in the checkpoint, so random draws inside the "
                "dataset differ until the epoch ends (the order of samples is exact).",
                stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Warn if random numbers were drawn between the last epoch-end checkpoint and now.

        A resumed run restores the states of the checkpoint and does not repeat those draws (made
        by hooks that run after ``ModelCheckpoint`` at the end of the epoch), so it could not
        continue exactly from that checkpoint.
        """
        saved, self._saved_at_epoch_end = self._saved_at_epoch_end, None
        if saved is not None and not _same_states(saved, collect_rng_states()):
            warnings.warn(
                "ExactResume: random numbers were drawn after the checkpoint at the end of epoch "
                f"{trainer.current_epoch - 1} was written and before epoch "
                f"{trainer.current_epoch} began (by a hook that runs after ModelCheckpoint, such as "
                "on_train_epoch_end when checkpoints are written at on_validation_end); a run "
                "resumed from that "
                "checkpoint will not repeat them and differs from this one. Draw them with a "
                "generator of your own, or before the checkpoint is written.",
                stacklevel=2,
            )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Forget the run, so the callback can serve another ``fit``."""
        self._trainer = None
        self._loaded = None
        self._fit_started = False
        self._saved_at_epoch_end = None
