"""Rank 0's writer of :class:`~lightning_climate.callbacks.DifficultyScores` records, and the run description.

It owns the run's :class:`~lightning_climate.io.RecordStore`: it never touches a path that this
run did not create (each store carries its run's id), continues the run's own store after a resume
(dropping the records written after the restored checkpoint and the leftovers of a killed write),
and appends in a background thread with at most one record in flight, so the write overlaps
training. :meth:`RecordWriter.flush` waits for that record; the callback calls it before every
checkpoint, so a checkpoint lists durable records only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_climate import __version__
from lightning_climate.io import RecordStore

__all__ = ["RecordWriter", "run_attributes"]

Record = tuple[int, int]
_TRAINING_CONVENTION = (
    "training mode: scores from the first forward of each training step, with the weights each "
    "example met before that step's update"
)


class RecordWriter:
    """Background writer of one run's record store.

    Args:
        path: the run's store.
    """

    def __init__(self, path: Path) -> None:
        self.store = RecordStore(path)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    @property
    def path(self) -> Path:
        """The store's path."""
        return self.store.path

    def refuse_foreign(self) -> str | None:
        """Why a new run may not write at :attr:`path` (anything there is not its own), or None."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        what = "a score store of another run" if self.store.exists() else "a file or directory"
        return (
            f"DifficultyScores: {self.path} already exists ({what}); a new run never overwrites "
            "it. Pass another `path`, move the old one away, or resume the run that wrote it "
            "with `ckpt_path`."
        )

    def resume(self, run_id: str, scored: list[Record]) -> tuple[list[Record], list[str]]:
        """Continue this run's store after a resume from a checkpoint listing ``scored``.

        Removes the leftovers of a killed write and the records written after the checkpoint.

        Returns:
            The checkpoint's records that the store holds (a prefix of ``scored``), and messages
            for the log (what was removed, what is missing).

        Raises:
            FileExistsError: the store belongs to another run.
        """
        if not self.store.exists():
            if self.path.exists():
                raise FileExistsError(self.refuse_foreign())
            if not scored:  # the checkpoint predates the first record: nothing to continue
                return [], []
            return [], [f"the run's store {self.path} is missing; its records {scored} are lost"]
        owner = self.store.attrs().get("run_id")
        if owner != run_id:
            raise FileExistsError(
                f"DifficultyScores: {self.path} was written by run {owner}, not by the run of "
                f"this checkpoint ({run_id}); pass another `path`."
            )
        messages = []
        removed = self.store.repair()
        if removed:
            messages.append(f"removed the leftovers of an interrupted write: {removed}")
        stored = self.store.records()
        common = 0
        while common < min(len(stored), len(scored)) and stored[common] == scored[common]:
            common += 1
        if common < len(stored):
            messages.append(
                f"dropped the records {stored[common:]} written after the restored checkpoint"
            )
            self.store.truncate(common)
        if common < len(scored):
            messages.append(
                f"the checkpoint lists records {scored[common:]} that {self.path} does not hold; "
                "they cannot be computed again (the models that produced them are gone)"
            )
        return scored[:common], messages

    def submit(self, write: Callable[[RecordStore], None]) -> None:
        """Run ``write(store)`` in the writer thread once the previous record is written."""
        self.flush()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="DifficultyScores")
        self._pending = self._pool.submit(write, self.store)

    def flush(self) -> None:
        """Wait for the record in flight; its write error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except OSError as err:
            raise OSError(
                f"DifficultyScores could not write its scores to {self.path}: {err}. Pass a "
                "writable `path`; the records written before are intact."
            ) from err

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks; a thread pool cannot be pickled
        self.flush()
        return {**self.__dict__, "_pool": None, "_pending": None}


def run_attributes(
    trainer: Trainer, pl_module: LightningModule, run_id: str, config: Mapping[str, Any]
) -> dict[str, Any]:
    """The store's description of the run: model, architecture, seed, configuration, conventions."""
    hparams = dict(pl_module.hparams) if pl_module.hparams else {}
    model = hparams.get("model")
    # a model given by name (timm) is in the hparams; an injected module is named by its class
    inner = getattr(pl_module, "model", None)
    if not isinstance(model, str) and isinstance(inner, nn.Module):
        model = type(inner).__name__
    return {
        "title": "Per-example difficulty scores",
        "source": f"lightning_climate {__version__} DifficultyScores",
        "run_id": run_id,
        "model_class": type(pl_module).__name__,
        "architecture": model if isinstance(model, str) else type(pl_module).__name__,
        "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1")),
        "world_size": trainer.world_size,
        "num_parameters": sum(p.numel() for p in pl_module.parameters()),
        "callback_config": json.dumps(config),
        "hparams": json.dumps(hparams, default=repr),
        "conventions": (
            ("eval mode" if config.get("source", "eval") == "eval" else _TRAINING_CONVENTION)
            + "; margin on probabilities; forgetting with acc(-1)=0 over the recorded "
            "epochs; VoG on the input gradient of p_y, channel-mean then variance over "
            "records then pixel-mean; prediction depth = first probed layer from which all "
            "k-NN probes agree with the network's prediction; NaN = not computed"
        ),
    }
