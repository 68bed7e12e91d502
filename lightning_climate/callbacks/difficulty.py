"""Per-example difficulty scores logged during training, exact under DDP.

:class:`DifficultyScores` re-evaluates a chosen split in eval mode at chosen epochs or steps, or
reads the cheap scores from the training forward passes (``source="training"``), and writes one
Zarr store per run (dims ``(epoch, index)``, the run's configuration in the attributes), grown by
one record per scoring point at a constant cost and crash-safely. Its parts: the schedule
(:mod:`.difficulty_schedule`), the scoring pass (:mod:`.difficulty_probe`), the capture from
training (:mod:`.difficulty_capture`), the gathering on rank 0 (:mod:`.difficulty_gather`) and the
writer (:mod:`.difficulty_writer`, on :class:`lightning_climate.io.RecordStore`). Score
definitions are in :mod:`lightning_climate.analysis.scores`.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_climate.analysis.scores import (
    OUTPUT_SCORES,
    VoGAccumulator,
    forgetting_statistics,
    knn_predict,
    prediction_depth,
)
from lightning_climate.callbacks.difficulty_capture import (
    TrainingCapture,
    check_whole_epochs,
    training_source_problems,
)
from lightning_climate.callbacks.difficulty_gather import (
    first_occurrence,
    gather_rows_to_rank_zero,
    gather_to_rank_zero,
)
from lightning_climate.callbacks.difficulty_probe import (
    BatchFormat,
    Key,
    Shard,
    check_logits,
    probe_loader,
    score_shard,
    to_device,
)
from lightning_climate.callbacks.difficulty_schedule import COSTLY_SCORES, ScoreSchedule
from lightning_climate.callbacks.difficulty_writer import RecordWriter, run_attributes
from lightning_climate.io import RecordStore
from lightning_climate.utils import lazy_import

__all__ = ["DIFFICULTY_SCORES", "DifficultyScores"]

_FORGETTING = ("forgetting", "first_learned", "first_unforgettable", "unforgettable")
#: every score name the callback accepts.
DIFFICULTY_SCORES = (*OUTPUT_SCORES, *COSTLY_SCORES, *_FORGETTING)
_CHEAP = ("loss", "accuracy", "confidence", "margin", "el2n")
_SPLITS = ("train", "val", "test")
_SOURCES = ("eval", "training")


def _call_module(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


class DifficultyScores(Callback):
    """Score every example of a split in eval mode during training and write the scores to a store.

    The module must provide batches holding the inputs, integer class labels and (optionally) a
    unique integer id per example: dicts (``input_key``, ``target_key``, ``index_key``) or tuples
    (``input_key=0, target_key=1, index_key=None`` for ``(x, y)`` batches: the id is then the
    example's position in the dataset), and a forward pass ``pl_module(x) -> (B, C)`` logits (or
    pass ``forward``). The batch format is checked on one batch when training starts, before the
    first step. The scored split is read again from the datamodule's or the module's
    ``<split>_dataloader()``, or from the loaders given to ``trainer.fit``, without
    shuffling, with the same batch transfer hooks as training; under DDP each rank scores a
    :class:`~torch.utils.data.DistributedSampler` shard, the shards are gathered on rank 0 only,
    the sampler's padding duplicates are dropped by index, and rank 0 writes the store.

    Loss, accuracy, confidence, max-confidence, entropy, margin and EL2N share one forward pass;
    GraNd (``torch.func``), VoG (input gradients) and prediction depth (k-NN probes on ``layers``)
    cost more and can be restricted to a few epochs with ``score_epochs``.

    With ``source="training"`` there is no extra pass: the one-pass scores and the forgetting
    statistics are read from the first forward of each training step (a forward hook on
    ``logits_module``), with the model in training mode and each example scored with the weights
    it met in that epoch, and the epoch's record is written at its end. The batches must then
    carry example ids (wrap the dataset in
    :class:`~lightning_climate.callbacks.IndexedDataset`), every batch of the epoch must be
    trained on (an interrupted or shortened epoch is skipped with a warning), and the costly
    scores, ``steps`` and the options of the extra pass are refused.

    The store (``xarray.open_zarr(path)``) belongs to the run: a new run refuses to start when
    anything exists at ``path``; a resumed run continues its own store (also with the default path,
    which lies in the first run's log directory) after dropping the records written after the
    restored checkpoint. Every checkpoint waits for the record in flight, so it lists only records
    that are in the store.

    Args:
        scores: names from :data:`DIFFICULTY_SCORES` to record.
        epochs: epochs (0-based) after whose training the scores are computed; ``-1`` scores the
            model before training. ``None`` scores every ``every_n_epochs``-th epoch.
        every_n_epochs: scoring period when ``epochs`` is ``None``; 0 disables epoch scoring.
        steps: global steps after which to score as well (recorded with the current epoch).
        score_epochs: per-score epochs, e.g. ``{"grand": [9, 19]}``: the score is computed at
            these epochs only (and not at ``steps``); an epoch listed here is scored even if
            ``epochs``/``every_n_epochs`` skip it (the one-pass scores are recorded with it).
        split: which datamodule split to score.
        input_key: batch key (dict batches) or position (tuple batches) of the inputs.
        target_key: batch key or position of the class labels.
        index_key: batch key or position of the example ids; ``None`` uses each example's position
            in the dataset.
        forward: ``forward(pl_module, x) -> logits`` when ``pl_module(x)`` does not return logits;
            must be a module-level function (it is pickled for DDP).
        layers: names of submodules (``pl_module.named_modules()``) whose outputs feed the k-NN
            probes of prediction depth, ordered from input to output.
        knn_k: neighbours of each k-NN probe.
        batch_size: batch size of the scoring pass; ``None`` reuses the split's.
        grand_chunk_size: examples per vectorised GraNd chunk (memory ``chunk x parameters``).
        grand_parameters: compute GraNd over the parameters under these names only
            (``pl_module.named_parameters()`` prefixes, e.g. ``["model.fc"]``): the last-layer
            approximation for large models; ``None`` uses all trainable parameters.
        path: output Zarr store; default ``<trainer.log_dir or default_root_dir>/difficulty_scores.zarr``.
        run_attrs: extra store attributes (e.g. ``{"architecture": "cnn"}``) for the analysis.
        transfer_hooks: apply the module's/datamodule's batch transfer hooks (normalisation) to
            scoring batches; disable when ``on_after_batch_transfer`` augments during training.
        cache_batches: keep the scored split's collated batches in CPU memory after the first
            pass instead of loading them again at every scoring point (the dominant cost of the
            cheap scores on small models). Only for datasets without random transforms.
        source: ``"eval"``: an extra eval-mode pass over ``split`` at each scoring point (the
            definition of Kwok et al.); ``"training"``: the training forward passes of the
            scored epochs, in training mode (forgetting events and dataset cartography).
        logits_module: with ``source="training"``, the name of the submodule
            (``pl_module.named_modules()``) whose output is the ``(batch, classes)`` logits,
            e.g. ``"model"`` when ``training_step`` calls ``self.model(x)``; ``None`` hooks the
            LightningModule itself (``self(x)``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        Writes a Zarr store (constant cost per record) instead of a NetCDF file; gathers on rank
        0 only; accepts tuple batches and ``index_key=None``; ``grand_parameters``;
        ``source="training"`` and ``logits_module``.
    """

    def __init__(
        self,
        scores: Sequence[str] = _CHEAP,
        epochs: Sequence[int] | None = None,
        every_n_epochs: int = 1,
        steps: Sequence[int] | None = None,
        score_epochs: Mapping[str, Sequence[int]] | None = None,
        split: Literal["train", "val", "test"] = "train",
        input_key: Key = "image",
        target_key: Key = "label",
        index_key: Key | None = "index",
        forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
        layers: Sequence[str] | None = None,
        knn_k: int = 30,
        batch_size: int | None = None,
        grand_chunk_size: int | None = 64,
        grand_parameters: Sequence[str] | None = None,
        path: str | None = None,
        run_attrs: Mapping[str, str | int | float] | None = None,
        transfer_hooks: bool = True,
        cache_batches: bool = False,
        source: Literal["eval", "training"] = "eval",
        logits_module: str | None = None,
    ) -> None:
        unknown = sorted(set(scores) - set(DIFFICULTY_SCORES))
        if isinstance(scores, str) or unknown or not scores:
            raise ValueError(
                f"Unknown difficulty scores {unknown or scores!r} (or none given); pass a list "
                f"of names from {list(DIFFICULTY_SCORES)}."
            )
        if "prediction_depth" in scores and not layers:
            raise ValueError(
                "prediction_depth needs `layers`: the names of the submodules whose outputs the "
                "k-NN probes use, e.g. layers=['model.0', 'model.2']."
            )
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}.")
        bad_keys = sorted(set(score_epochs or {}) - set(scores))
        if bad_keys:
            raise ValueError(f"score_epochs names scores {bad_keys} that are not in `scores`.")
        for name, value, minimum in (
            ("knn_k", knn_k, 1),
            ("batch_size", batch_size, 1),
            ("grand_chunk_size", grand_chunk_size, 1),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < minimum
            ):
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
        for name, key in (
            ("input_key", input_key),
            ("target_key", target_key),
            ("index_key", index_key),
        ):
            if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
                raise TypeError(
                    f"{name} must be a str (dict batches) or an int (tuple batches), got {key!r}."
                )
        if path is not None and not str(path).rstrip("/").endswith(".zarr"):
            raise ValueError(
                f"path={path!r}: DifficultyScores writes a Zarr store; name it '*.zarr' (e.g. "
                "'scores.zarr'). NetCDF files of earlier versions still read with "
                "lightning_climate.analysis.difficulty."
            )
        for key, value in (run_attrs or {}).items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TypeError(
                    f"run_attrs[{key!r}] = {value!r}: store attributes hold a str, int or float; "
                    "convert it (e.g. str(value), or 0/1 for a flag)."
                )
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be a callable forward(pl_module, x), got {forward!r}.")
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}.")
        if logits_module is not None and source == "eval":
            raise ValueError(
                "logits_module applies to source='training' (a hook on the training forward); the "
                "eval pass calls the module itself: pass forward=<(pl_module, x) -> logits>."
            )
        if source == "training":
            problems = training_source_problems(
                scores, epochs, steps, split, index_key, forward, layers, batch_size,
                transfer_hooks, cache_batches,
            )  # fmt: skip
            if problems:
                raise ValueError(
                    "DifficultyScores(source='training') reads the scores from the training "
                    "forward passes, once per epoch: " + " ".join(problems)
                )
        self.schedule = ScoreSchedule.build(epochs, every_n_epochs, steps, score_epochs)
        self.scores = tuple(scores)
        self.split = split
        self.batch_format = BatchFormat(input_key, target_key, index_key)
        self.forward = forward or _call_module
        self.layers = list(layers or ())
        self.knn_k = knn_k
        self.batch_size = batch_size
        self.grand_chunk_size = grand_chunk_size
        self.grand_parameters = None if grand_parameters is None else list(grand_parameters)
        self.path = path
        self.run_attrs = dict(run_attrs or {})
        self.transfer_hooks = transfer_hooks
        self.cache_batches = cache_batches
        self.source = source
        self.logits_module = logits_module
        # state that travels with checkpoints
        self.run_id: str | None = None  # written into the store: the store belongs to this run
        self.scored: list[tuple[int, int]] = []  # (epoch, global_step) of every durable record
        self.index_values: Tensor | None = None  # sorted example indices of the scored split
        self.accuracy_trace: list[Tensor] = []
        self.vog = VoGAccumulator(0)
        self.last_summary: dict[str, float] = {}
        # per-process
        self._checkpoint_path: str | None = None  # the store path a restored checkpoint names
        self._loader: Any = None
        self._cache: list[Any] | None = None
        self._writer: RecordWriter | None = None
        self._capture: TrainingCapture | None = None
        if source == "training":
            kept = [n for n in OUTPUT_SCORES if n in scores or n == "accuracy"]
            self._capture = TrainingCapture(self.batch_format, logits_module, kept)

    @property
    def state_key(self) -> str:
        """Distinct per split and output path, so several instances can coexist."""
        if self.source == "training":
            return self._generate_state_key(split=self.split, path=self.path, source=self.source)
        return self._generate_state_key(split=self.split, path=self.path)

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse sharded strategies, check ``layers``, zarr and that the output path is writable."""
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise TypeError(
                "DifficultyScores evaluates the full model on every rank; use DDP or a single "
                f"device instead of {type(trainer.strategy).__name__}."
            )
        modules = dict(pl_module.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(
                f"layers {missing} are not submodules of {type(pl_module).__name__}; choose from "
                f"{[n for n in modules if n][:20]} (names of pl_module.named_modules())."
            )
        names = [n for n, _ in pl_module.named_parameters()]
        for prefix in self.grand_parameters or ():
            if not any(n == prefix or n.startswith(f"{prefix}.") for n in names):
                raise ValueError(
                    f"grand_parameters: {prefix!r} names no parameter of "
                    f"{type(pl_module).__name__}; use prefixes of {names[-4:]} (named_parameters())."
                )
        if self.logits_module is not None and self.logits_module not in modules:
            raise ValueError(
                f"logits_module={self.logits_module!r} is not a submodule of "
                f"{type(pl_module).__name__}; choose from {[n for n in modules if n][:20]} "
                "(names of pl_module.named_modules())."
            )
        lazy_import("zarr")  # the writer needs it; fail here, not one epoch later in its thread
        root = trainer.log_dir or trainer.default_root_dir
        default = "difficulty_scores.zarr" if self.source == "eval" else "difficulty_training.zarr"
        path = Path(self.path or Path(root) / default)
        self._writer = RecordWriter(path)
        self._agree(trainer, _unwritable(path) if trainer.is_global_zero else None, OSError)
        self._loader = None
        self._cache = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Claim the store (new run) or continue it (resumed run)."""
        writer = self._require_writer()
        if self._checkpoint_path is not None and self.path is None:
            # the default path lies in the log directory of the run's first version
            writer = self._writer = RecordWriter(Path(self._checkpoint_path))
        error = None
        if trainer.is_global_zero:
            if self.run_id is None:
                error = writer.refuse_foreign()
                if self.scored and error is None:  # a checkpoint of a version before run ids
                    rank_zero_warn(
                        f"DifficultyScores: the checkpoint lists records {self.scored} of a score "
                        f"file written by an earlier version; {writer.path} starts after them."
                    )
            else:
                try:
                    kept, messages = writer.resume(self.run_id, self.scored)
                except FileExistsError as err:
                    error = str(err)
                else:
                    for message in messages:
                        rank_zero_warn(f"DifficultyScores: {message}.")
                    self.scored = kept
        self._agree(trainer, error, FileExistsError)
        if trainer.world_size > 1:  # every rank decides what is due from the same records
            self.scored = trainer.strategy.broadcast(self.scored, src=0)
        if self.run_id is None:
            self.run_id = uuid.uuid4().hex
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check one batch of the scored split (before any training step); score -1 if chosen."""
        self._check_batch(trainer, pl_module)
        if self._capture is not None:
            check_whole_epochs(trainer)
            self._capture.attach(pl_module)
        if self.schedule.epochs is not None and -1 in self.schedule.epochs and not self.scored:
            self._score_and_record(trainer, pl_module, epoch=-1, by_step=False)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """With ``source="training"``, capture the scores of a scored epoch from its first step."""
        if self._capture is not None:
            self._capture.start_epoch(self.schedule.due(trainer.current_epoch))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """With ``source="training"``, read the step's labels and ids before its forward."""
        if self._capture is not None:
            self._capture.start_batch(batch, batch_idx)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Score the step's examples (``source="training"``), or after the ``steps`` listed."""
        if self._capture is not None:
            self._capture.end_batch(batch_idx)
            return
        step = trainer.global_step
        # a step ending a scored epoch is left to on_train_epoch_end (same model, all its scores)
        if trainer.is_last_batch and self.schedule.due(trainer.current_epoch):
            return
        if step in self.schedule.steps and (trainer.current_epoch, step) not in self.scored:
            self._score_and_record(trainer, pl_module, trainer.current_epoch, by_step=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score after the epochs chosen by ``epochs``/``every_n_epochs``/``score_epochs``."""
        epoch = trainer.current_epoch
        if not self.schedule.due(epoch) or (epoch, trainer.global_step) in self.scored:
            return
        if self._capture is None:
            self._score_and_record(trainer, pl_module, epoch, by_step=False)
        elif self._capture.whole_epoch(trainer, epoch):
            self._record(trainer, pl_module, epoch, self._capture.shard(), [])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Wait until the last record is in the store."""
        if self._capture is not None:
            self._capture.detach()
        if self._writer is not None:
            self._writer.flush()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Finish writing the records scored before the crash (the training error propagates).

        A partly captured epoch (``source="training"``) is dropped: it is not a record.
        """
        if self._capture is not None:
            self._capture.detach()
            self._capture.start_epoch(False)
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception as err:  # noqa: BLE001 - must not mask the training error
            rank_zero_warn(f"DifficultyScores could not write its last record: {err!r}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Stop the writer thread."""
        if self._capture is not None:
            self._capture.detach()
        if self._writer is not None:
            self._writer.close()

    def state_dict(self) -> dict[str, Any]:
        """Durable records, the store's path and run id, the accuracy trace and VoG accumulators.

        Waits for the record in flight first, so a checkpoint never lists a record that a kill
        right after it could lose.
        """
        if self._writer is not None:
            self._writer.flush()
        return {
            "run_id": self.run_id,
            "path": None if self._writer is None else str(self._writer.path),
            "scored": list(self.scored),
            "index_values": None if self.index_values is None else self.index_values.clone(),
            "accuracy_trace": [a.clone() for a in self.accuracy_trace],
            "vog": self.vog.state_dict(),
            "last_summary": dict(self.last_summary),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the store is reconciled with it when fit starts."""
        self.run_id = state_dict.get("run_id")
        self._checkpoint_path = state_dict.get("path")
        self.scored = [tuple(s) for s in state_dict.get("scored", [])]  # type: ignore[misc]
        self.accuracy_trace = [a.clone() for a in state_dict.get("accuracy_trace", [])]
        index_values = state_dict.get("index_values")
        self.index_values = None if index_values is None else index_values.clone()
        if "vog" in state_dict:
            self.vog.load_state_dict(state_dict["vog"])
        self.last_summary = dict(state_dict.get("last_summary", {}))

    # --------------------------------------------------------------- scoring

    def _require_writer(self) -> RecordWriter:
        if self._writer is None:
            raise RuntimeError("DifficultyScores.setup must run before fit starts.")
        return self._writer

    @staticmethod
    def _agree(trainer: Trainer, error: str | None, kind: type[Exception]) -> None:
        """Raise rank 0's ``error`` on every rank (a rank that raised alone would hang the rest)."""
        if trainer.world_size > 1:
            error = trainer.strategy.broadcast(error, src=0)
        if error:
            raise kind(error)

    def _probe(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        if self._loader is None:
            self._loader = probe_loader(trainer, pl_module, self.split, self.batch_size)
        return self._loader

    def _batches(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        """The scoring batches; with ``cache_batches`` collated once and then kept on the CPU."""
        loader = self._probe(trainer, pl_module)
        if not self.cache_batches:
            return iter(loader)
        if self._cache is None:
            self._cache = list(loader)
        return iter(self._cache)

    @torch.no_grad()
    def _check_batch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Unpack one scoring batch and run the model on it: wrong formats fail before training."""
        batch = next(iter(self._probe(trainer, pl_module)), None)
        if batch is None:
            raise ValueError(f"DifficultyScores: the {self.split} split is empty.")
        x, y, _ = self.batch_format.unpack(
            to_device(trainer, pl_module, batch, self.transfer_hooks)
        )
        if self._capture is not None:  # its logits are checked at the first training step
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            logits = self.forward(pl_module, x)
        finally:
            pl_module.train(was_training)
        check_logits(
            logits,
            y,
            self.batch_format.target_key,
            "the model",
            "pass forward=<a module-level function (pl_module, x) -> logits>",
        )

    def _score_and_record(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, by_step: bool
    ) -> None:
        active = [
            n for n in COSTLY_SCORES if n in self.scores and self.schedule.active(n, epoch, by_step)
        ]
        was_training = pl_module.training
        pl_module.eval()
        try:
            shard = score_shard(
                trainer,
                pl_module,
                self._batches(trainer, pl_module),
                self._probe(trainer, pl_module),
                self.batch_format,
                self.forward,
                active,
                self.layers,
                self.transfer_hooks,
                self.grand_chunk_size,
                None
                if self.grand_parameters is None
                else [f"module.{p}" for p in self.grand_parameters],
            )
        finally:
            pl_module.train(was_training)
        self._record(trainer, pl_module, epoch, shard, active)

    def _record(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        epoch: int,
        shard: Shard,
        active: list[str],
    ) -> None:
        """Gather this rank's ``shard`` on rank 0, which writes the record and logs its means."""
        record, error = self._gather_record(trainer, pl_module, shard, active)
        self._agree(trainer, error, ValueError)
        self.scored.append((epoch, trainer.global_step))
        if record is None:  # not rank 0: the record lives there only
            return
        self._write(trainer, pl_module, epoch, record)
        self.last_summary = {f"difficulty/{n}_mean": float(v.nanmean()) for n, v in record.items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.last_summary, step=trainer.global_step)

    def _gather_record(
        self, trainer: Trainer, pl_module: LightningModule, shard: Shard, active: list[str]
    ) -> tuple[dict[str, Tensor] | None, str | None]:
        """Gather the shards on rank 0 and turn them into the record (``None`` elsewhere)."""
        num_examples = len(self._probe(trainer, pl_module).dataset)
        names = sorted(shard.columns)
        table = torch.stack([shard.columns[n] for n in names], 1)
        # every rank takes part in every gather, in the same order
        index = gather_rows_to_rank_zero(trainer, pl_module, shard.index)
        table = gather_rows_to_rank_zero(trainer, pl_module, table)
        vog = None
        if "vog" in active and shard.vog is not None:
            vog = gather_to_rank_zero(trainer, pl_module, shard.vog)
        features = [gather_to_rank_zero(trainer, pl_module, f.double()) for f in shard.features]
        if index is None or table is None:
            return None, None
        keep = first_occurrence(index)
        error = self._check_index(index[keep], num_examples)
        if error:
            return None, error
        results = {n: table[keep, i].double() for i, n in enumerate(names)}
        record = {n: results[n] for n in OUTPUT_SCORES if n in self.scores}
        if "grand" in active:
            record["grand"] = results["grand"]
        if vog is not None:
            if self.vog.num_examples != num_examples:
                self.vog = VoGAccumulator(num_examples)
            self.vog.update(torch.arange(num_examples), vog[keep])
            record["vog"] = self.vog.compute()
        if "prediction_depth" in active:
            # probes are fit on the true labels; the depth compares them with the prediction
            labels = results["target"].long()
            k = min(self.knn_k, num_examples - 1)
            probes = [knn_predict(f[keep], labels, k) for f in features if f is not None]
            depth = prediction_depth(torch.stack(probes), results["prediction"].long())
            record["prediction_depth"] = depth.double()
        if any(n in self.scores for n in _FORGETTING):
            self.accuracy_trace.append(results["accuracy"].to(torch.uint8))
            stats = forgetting_statistics(torch.stack(self.accuracy_trace))
            for name in _FORGETTING:
                if name in self.scores:
                    record[name] = stats[name].double()
        return record, None

    def _check_index(self, index: Tensor, num_examples: int) -> str | None:
        """Why the gathered, de-duplicated ids do not name every example once, the same each time."""
        key = self.batch_format.index_key
        if len(index) != num_examples and self._capture is not None:
            return (
                f"DifficultyScores(source='training'): the training steps of an epoch carried "
                f"{len(index)} distinct ids under `{key}` for the {num_examples} examples of the "
                "training dataset. Every example must pass through a training step in every "
                "epoch with its own id (IndexedDataset(dataset) gives each its position); for a "
                "sampler that skips examples use source='eval'."
            )
        if len(index) != num_examples:
            return (
                f"Batch key `{key}` must identify every example of the scored dataset: "
                f"{num_examples} examples carried {len(index)} distinct values. Give each sample "
                "its own index (its position in the dataset), or pass index_key=None."
            )
        if self.index_values is None:
            self.index_values = index.clone()
        elif not torch.equal(self.index_values, index):
            return (
                f"The scored examples' `{key}` values changed between scoring points; the "
                "scored split must be the same dataset throughout training."
            )
        return None

    # ----------------------------------------------------------------- output

    def _attrs(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        config = {
            "scores": list(self.scores),
            **self.schedule.as_dict(),
            "split": self.split,
            "layers": self.layers,
            "knn_k": self.knn_k,
            "grand_parameters": self.grand_parameters,
            "forward": getattr(self.forward, "__qualname__", repr(self.forward)),
            "source": self.source,
            "logits_module": self.logits_module,
        }
        assert self.run_id is not None
        return {**run_attributes(trainer, pl_module, self.run_id, config), **self.run_attrs}

    def _write(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, record: dict[str, Tensor]
    ) -> None:
        """Hand the record to the writer thread, so the store write overlaps the next epoch."""
        writer = self._require_writer()
        assert self.index_values is not None
        values = {n: v.numpy() for n, v in record.items()}
        attrs = self._attrs(trainer, pl_module)
        step = trainer.global_step
        index = self.index_values.numpy()

        def write(store: RecordStore) -> None:
            if not store.exists():
                store.create(index, attrs)
            store.append(epoch, step, values, attrs)

        writer.submit(write)
        rank_zero_info(f"DifficultyScores: writing epoch {epoch} to {writer.path}")


def _unwritable(path: Path) -> str | None:
    """Why no store can be written at ``path`` (tested by creating a file beside it), or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        return (
            f"DifficultyScores cannot write its scores to {path}: {err}. Pass a writable file as "
            "`path` (a '*.zarr' store in a directory you can write to)."
        )
    return None
