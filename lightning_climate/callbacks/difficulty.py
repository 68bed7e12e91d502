"""Per-example difficulty scores logged during training, exact under DDP.

:class:`DifficultyScores` re-evaluates a chosen split in eval mode at chosen epochs or steps and
writes one self-describing NetCDF file per run (dims ``(epoch, index)``, the run's configuration in
the attributes), grown by one record atomically at each scoring point so a crash loses no written epoch.
Score definitions are in :mod:`lightning_climate.analysis.scores`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_climate import __version__
from lightning_climate.analysis.scores import (
    OUTPUT_SCORES,
    VoGAccumulator,
    forgetting_statistics,
    functional_forward,
    grand,
    input_gradients,
    knn_predict,
    output_scores,
    prediction_depth,
)
from lightning_climate.callbacks.record_file import RecordFile
from lightning_climate.utils import lazy_import

__all__ = ["DIFFICULTY_SCORES", "DifficultyScores"]

_FORGETTING = ("forgetting", "first_learned", "first_unforgettable", "unforgettable")
#: every score name the callback accepts.
DIFFICULTY_SCORES = (*OUTPUT_SCORES, "grand", "vog", "prediction_depth", *_FORGETTING)
_CHEAP = ("loss", "accuracy", "confidence", "margin", "el2n")

_REQUIREMENTS = (
    "DifficultyScores needs batches that are mappings (dicts) holding the input under "
    "`input_key`, integer class labels under `target_key` and a unique integer id of each example "
    "(e.g. its position in the dataset) under `index_key`, and a model whose forward (or the `forward` callable) maps the "
    "input to (batch, classes) logits."
)


def _call_module(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _first_occurrence(index: Tensor) -> Tensor:
    """Positions of the first occurrence of every distinct value of ``index``."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[keep]


class DifficultyScores(Callback):
    """Score every example of a split in eval mode during training and write the scores to a file.

    The module must provide: batches that are dicts with ``input_key``, ``target_key`` (class
    labels) and ``index_key`` (a unique integer id per example, e.g. its position in the dataset;
    it becomes the file's ``index`` coordinate, sorted), and a forward pass
    ``pl_module(x) -> (B, C)`` logits (or pass ``forward``). The scored split is read again from
    ``trainer.datamodule.<split>_dataloader()`` (or the module's) without shuffling, with the same
    batch transfer hooks as training; under DDP each rank scores a
    :class:`~torch.utils.data.DistributedSampler` shard, scores are gathered on every rank, the
    sampler's padding duplicates are dropped by index, and rank 0 writes the file.

    Loss, accuracy, confidence, max-confidence, entropy, margin and EL2N share one forward pass;
    GraNd (``torch.func``), VoG (input gradients) and prediction depth (k-NN probes on ``layers``)
    cost more and can be restricted to a few epochs with ``score_epochs``.

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
        input_key: batch key of the inputs.
        target_key: batch key of the class labels.
        index_key: batch key of the example positions.
        forward: ``forward(pl_module, x) -> logits`` when ``pl_module(x)`` does not return logits;
            must be a module-level function (it is pickled for DDP).
        layers: names of submodules (``pl_module.named_modules()``) whose outputs feed the k-NN
            probes of prediction depth, ordered from input to output.
        knn_k: neighbours of each k-NN probe.
        batch_size: batch size of the scoring pass; ``None`` reuses the split's.
        grand_chunk_size: examples per vectorised GraNd chunk (memory ``chunk x params``).
        path: output NetCDF file; default ``<trainer.log_dir or default_root_dir>/difficulty_scores.nc``.
        run_attrs: extra file attributes (e.g. ``{"architecture": "cnn"}``) for the analysis.
        transfer_hooks: apply the module's/datamodule's batch transfer hooks (normalisation) to
            scoring batches; disable when ``on_after_batch_transfer`` augments during training.
        cache_batches: keep the scored split's collated batches in CPU memory after the first
            pass instead of loading them again at every scoring point (the dominant cost of the
            cheap scores on small models). Only for datasets without random transforms.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        scores: Sequence[str] = _CHEAP,
        epochs: Sequence[int] | None = None,
        every_n_epochs: int = 1,
        steps: Sequence[int] | None = None,
        score_epochs: Mapping[str, Sequence[int]] | None = None,
        split: Literal["train", "val", "test"] = "train",
        input_key: str = "image",
        target_key: str = "label",
        index_key: str = "index",
        forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
        layers: Sequence[str] | None = None,
        knn_k: int = 30,
        batch_size: int | None = None,
        grand_chunk_size: int | None = 64,
        path: str | None = None,
        run_attrs: Mapping[str, str | int | float] | None = None,
        transfer_hooks: bool = True,
        cache_batches: bool = False,
    ) -> None:
        unknown = sorted(set(scores) - set(DIFFICULTY_SCORES))
        if unknown or not scores:
            raise ValueError(
                f"Unknown difficulty scores {unknown} (or none given); choose from "
                f"{list(DIFFICULTY_SCORES)}."
            )
        if "prediction_depth" in scores and not layers:
            raise ValueError(
                "prediction_depth needs `layers`: the names of the submodules whose outputs the "
                "k-NN probes use, e.g. layers=['model.0', 'model.2']."
            )
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}.")
        if epochs is not None and any(e < -1 for e in epochs):
            raise ValueError(f"epochs must be >= -1 (-1 = before training), got {list(epochs)}.")
        bad_keys = sorted(set(score_epochs or {}) - set(scores))
        if bad_keys:
            raise ValueError(f"score_epochs names scores {bad_keys} that are not in `scores`.")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.scores = tuple(scores)
        self.epochs = None if epochs is None else sorted(set(epochs))
        self.every_n_epochs = every_n_epochs
        self.steps = sorted(set(steps or ()))
        self.score_epochs = {k: sorted(set(v)) for k, v in (score_epochs or {}).items()}
        self.split = split
        self.input_key, self.target_key, self.index_key = input_key, target_key, index_key
        self.forward = forward or _call_module
        self.layers = list(layers or ())
        self.knn_k = knn_k
        self.batch_size = batch_size
        self.grand_chunk_size = grand_chunk_size
        self.path = path
        self.run_attrs = dict(run_attrs or {})
        for key, value in self.run_attrs.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TypeError(
                    f"run_attrs[{key!r}] = {value!r}: NetCDF attributes hold a str, int or float; "
                    "convert it (e.g. str(value), or 0/1 for a flag)."
                )
        self.transfer_hooks = transfer_hooks
        self.cache_batches = cache_batches
        # state that travels with checkpoints
        self.scored: list[tuple[int, int]] = []  # (epoch, global_step) of every written record
        self.index_values: Tensor | None = None  # sorted example indices of the scored split
        self.accuracy_trace: list[Tensor] = []
        self.vog = VoGAccumulator(0)
        self.last_summary: dict[str, float] = {}
        # per-process caches
        self._loader: DataLoader[Any] | None = None
        self._cache: list[Any] | None = None
        self._file_synced = False  # the file holds exactly the records in `scored`
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._resolved_path: Path | None = None

    @property
    def state_key(self) -> str:
        """Distinct per split and output path, so several instances can coexist."""
        return self._generate_state_key(split=self.split, path=self.path)

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse sharded strategies, check ``layers`` and netCDF4, and resolve the output file."""
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
        lazy_import("netCDF4")  # the writer needs it; fail here, not one epoch later in its thread
        root = trainer.log_dir or trainer.default_root_dir
        self._resolved_path = Path(self.path or Path(root) / "difficulty_scores.nc")
        self._loader = None
        self._cache = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score the initial model when ``epochs`` contains -1."""
        if self.epochs is not None and -1 in self.epochs and not self.scored:
            self._score_and_record(trainer, pl_module, epoch=-1, by_step=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Score after the global steps listed in ``steps``."""
        step = trainer.global_step
        # a step ending a scored epoch is left to on_train_epoch_end (same model, all its scores)
        if trainer.is_last_batch and self._due(trainer.current_epoch):
            return
        if step in self.steps and (trainer.current_epoch, step) not in self.scored:
            self._score_and_record(trainer, pl_module, trainer.current_epoch, by_step=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score after the epochs chosen by ``epochs``/``every_n_epochs``/``score_epochs``."""
        epoch = trainer.current_epoch
        if self._due(epoch) and (epoch, trainer.global_step) not in self.scored:
            self._score_and_record(trainer, pl_module, epoch, by_step=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Wait until the last record is in the file."""
        self._flush()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Finish writing the records scored before the crash (the training error propagates)."""
        try:
            self._close()
        except Exception as err:  # noqa: BLE001 - must not mask the training error
            rank_zero_warn(f"DifficultyScores could not write its last record: {err!r}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Stop the writer thread."""
        self._close()

    def _close(self) -> None:
        try:
            self._flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def state_dict(self) -> dict[str, Any]:
        """Written records, the accuracy trace (forgetting) and the VoG accumulators."""
        return {
            "scored": list(self.scored),
            "index_values": None if self.index_values is None else self.index_values.clone(),
            "accuracy_trace": [a.clone() for a in self.accuracy_trace],
            "vog": self.vog.state_dict(),
            "last_summary": dict(self.last_summary),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the file's records not listed in it are dropped on write."""
        self.scored = [tuple(s) for s in state_dict.get("scored", [])]  # type: ignore[misc]
        self.accuracy_trace = [a.clone() for a in state_dict.get("accuracy_trace", [])]
        index_values = state_dict.get("index_values")
        self.index_values = None if index_values is None else index_values.clone()
        if "vog" in state_dict:
            self.vog.load_state_dict(state_dict["vog"])
        self.last_summary = dict(state_dict.get("last_summary", {}))
        self._file_synced = False

    # --------------------------------------------------------------- scoring

    def _epoch_scheduled(self, epoch: int) -> bool:
        if self.epochs is not None:
            return epoch in self.epochs
        return self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0

    def _due(self, epoch: int) -> bool:
        return self._epoch_scheduled(epoch) or any(epoch in e for e in self.score_epochs.values())

    def _active(self, name: str, epoch: int, by_step: bool) -> bool:
        if name not in self.scores:
            return False
        if name in self.score_epochs:
            return not by_step and epoch in self.score_epochs[name]
        return by_step or self._epoch_scheduled(epoch)

    def _probe_loader(self, trainer: Trainer, pl_module: LightningModule) -> DataLoader[Any]:
        if self._loader is not None:
            return self._loader
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        make = getattr(source, f"{self.split}_dataloader", None)
        if make is None:
            raise ValueError(
                f"{type(source).__name__} has no {self.split}_dataloader(); choose another `split`."
            )
        loader = make()
        if isinstance(loader, Sequence):
            if len(loader) != 1:
                raise ValueError(
                    f"The {self.split} split has {len(loader)} dataloaders; DifficultyScores scores "
                    "one dataset. Choose a split with a single dataloader."
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
            # rank r scores r, r+W, ...; the padding repeats the first examples and is dropped by index
            sampler = DistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        self._loader = DataLoader(
            dataset,
            batch_size=self.batch_size or loader.batch_size or 1,
            shuffle=False,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            # own generator: building an iterator must not consume the global RNG of training
            generator=torch.Generator().manual_seed(0),
        )
        return self._loader

    def _batches(self, loader: DataLoader[Any]) -> Any:
        """The scoring batches; with ``cache_batches`` collated once and then kept on the CPU."""
        if not self.cache_batches:
            return iter(loader)
        if self._cache is None:
            self._cache = list(loader)
        return iter(self._cache)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, Mapping):
            raise TypeError(f"{_REQUIREMENTS} Got a batch of type {type(batch).__name__}.")
        missing = [k for k in (self.input_key, self.target_key, self.index_key) if k not in batch]
        if missing:
            raise KeyError(
                f"{_REQUIREMENTS} The batch has no key(s) {missing}; it has {list(batch)}."
            )
        return batch[self.input_key], batch[self.target_key], batch[self.index_key]

    @torch.no_grad()
    def _score_local(
        self, trainer: Trainer, pl_module: LightningModule, active: list[str]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None, list[Tensor]]:
        """Scores of this rank's shard: index, score columns, VoG gradients, probe features."""
        loader = self._probe_loader(trainer, pl_module)
        wrapper = functional_forward(pl_module, self.forward)
        features: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        hooks = [_FeatureHook(features[name]) for name in self.layers]
        handles = []
        if "prediction_depth" in active:
            modules = dict(pl_module.named_modules())
            for name, hook in zip(self.layers, hooks, strict=True):
                handles.append(modules[name].register_forward_hook(hook))
        indices: list[Tensor] = []
        columns: dict[str, list[Tensor]] = {}
        vog_grads: list[Tensor] = []
        try:
            for batch in self._batches(loader):
                if self.transfer_hooks:
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                else:
                    batch = (
                        {
                            k: v.to(pl_module.device) if isinstance(v, Tensor) else v
                            for k, v in batch.items()
                        }
                        if isinstance(batch, Mapping)
                        else batch
                    )
                x, y, idx = self._unpack(batch)
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
                        g = grand(wrapper, x, y, chunk_size=self.grand_chunk_size)
                    columns.setdefault("grand", []).append(g.cpu())
                if "vog" in active:
                    g = input_gradients(wrapper, x, y)
                    vog_grads.append(VoGAccumulator.reduce_channels(g).cpu())
                indices.append(idx.long().cpu())
        finally:
            for handle in handles:
                handle.remove()
        index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
        cols = {k: torch.cat(v) for k, v in columns.items()}
        vog = torch.cat(vog_grads) if vog_grads else None
        feats = [torch.cat(features[name]) for name in self.layers] if handles else []
        return index, cols, vog, feats

    def _gather(self, trainer: Trainer, pl_module: LightningModule, tensor: Tensor) -> Tensor:
        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return tensor
        device = pl_module.device
        return torch.cat([t.cpu() for t in gather_all_tensors(tensor.to(device))])

    def _score_and_record(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, by_step: bool
    ) -> None:
        active = [
            n for n in ("grand", "vog", "prediction_depth") if self._active(n, epoch, by_step)
        ]
        was_training = pl_module.training
        pl_module.eval()
        try:
            index, cols, vog_grads, feats = self._score_local(trainer, pl_module, active)
        finally:
            pl_module.train(was_training)
        num_examples = len(self._probe_loader(trainer, pl_module).dataset)  # type: ignore[arg-type]
        names = sorted(cols)
        table = torch.stack([cols[n] for n in names], 1) if names else torch.zeros(len(index), 0)
        # gather on every rank, then keep one copy of each example, sorted by index
        index_all = self._gather(trainer, pl_module, index)
        keep = _first_occurrence(index_all)
        index_all = index_all[keep]
        table_all = self._gather(trainer, pl_module, table)[keep]
        self._check_index(index_all, num_examples)
        results = {n: table_all[:, i].double() for i, n in enumerate(names)}
        record = {n: results[n] for n in OUTPUT_SCORES if n in self.scores}
        if "grand" in active:
            record["grand"] = results["grand"]
        if "vog" in active and vog_grads is not None:
            if self.vog.num_examples != num_examples:
                self.vog = VoGAccumulator(num_examples)
            grads_all = self._gather(trainer, pl_module, vog_grads)[keep]
            self.vog.update(torch.arange(num_examples), grads_all)
            record["vog"] = self.vog.compute()
        if "prediction_depth" in active:
            # probes are fit on the true labels; the depth compares them with the prediction
            labels = results["target"].long()
            k = min(self.knn_k, num_examples - 1)
            probes = [
                knn_predict(self._gather(trainer, pl_module, f.double())[keep], labels, k)
                for f in feats
            ]
            depth = prediction_depth(torch.stack(probes), results["prediction"].long())
            record["prediction_depth"] = depth.double()
        if any(n in self.scores for n in _FORGETTING):
            self.accuracy_trace.append(results["accuracy"].to(torch.uint8))
            stats = forgetting_statistics(torch.stack(self.accuracy_trace))
            for name in _FORGETTING:
                if name in self.scores:
                    record[name] = stats[name].double()
        self.scored.append((epoch, trainer.global_step))
        if trainer.is_global_zero:
            self._write(trainer, pl_module, epoch, record)
            self.last_summary = {
                f"difficulty/{n}_mean": float(v.nanmean()) for n, v in record.items()
            }
            for logger in trainer.loggers:
                logger.log_metrics(self.last_summary, step=trainer.global_step)

    def _check_index(self, index: Tensor, num_examples: int) -> None:
        """The gathered, de-duplicated indices must name every example once, the same each time."""
        if len(index) != num_examples:
            raise ValueError(
                f"Batch key `{self.index_key}` must identify every example of the scored dataset: "
                f"{num_examples} examples carried {len(index)} distinct values. Give each sample "
                "its own index (its position in the dataset)."
            )
        if self.index_values is None:
            self.index_values = index.clone()
        elif not torch.equal(self.index_values, index):
            raise ValueError(
                f"The scored examples' `{self.index_key}` values changed between scoring points; "
                "the scored split must be the same dataset throughout training."
            )

    # ----------------------------------------------------------------- output

    def _attrs(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        config = {
            "scores": list(self.scores),
            "epochs": self.epochs,
            "every_n_epochs": self.every_n_epochs,
            "steps": self.steps,
            "score_epochs": self.score_epochs,
            "split": self.split,
            "layers": self.layers,
            "knn_k": self.knn_k,
            "forward": getattr(self.forward, "__qualname__", repr(self.forward)),
        }
        hparams = dict(pl_module.hparams) if pl_module.hparams else {}
        model = hparams.get("model")
        # a model given by name (timm) is in the hparams; an injected module is named by its class
        inner = getattr(pl_module, "model", None)
        if not isinstance(model, str) and isinstance(inner, nn.Module):
            model = type(inner).__name__
        attrs: dict[str, Any] = {
            "title": "Per-example difficulty scores",
            "source": f"lightning_climate {__version__} DifficultyScores",
            "model_class": type(pl_module).__name__,
            "architecture": model if isinstance(model, str) else type(pl_module).__name__,
            "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1")),
            "world_size": trainer.world_size,
            "num_parameters": sum(p.numel() for p in pl_module.parameters()),
            "callback_config": json.dumps(config),
            "hparams": json.dumps(hparams, default=repr),
            "conventions": (
                "eval mode; margin on probabilities; forgetting with acc(-1)=0 over the recorded "
                "epochs; VoG on the input gradient of p_y, channel-mean then variance over "
                "records then pixel-mean; prediction depth = first probed layer from which all "
                "k-NN probes agree with the network's prediction; NaN = not computed"
            ),
        }
        attrs.update(self.run_attrs)
        return attrs

    def _write(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, record: dict[str, Tensor]
    ) -> None:
        """Hand the record to the writer thread, so the file write overlaps the next epoch."""
        self._flush()  # one record in flight at most, and the file is in a known state
        path = self._resolved_path
        assert path is not None
        assert self.index_values is not None
        values = {n: v.numpy() for n, v in record.items()}
        attrs = self._attrs(trainer, pl_module)
        step = trainer.global_step
        file = RecordFile(path)
        if len(self.scored) == 1 or not path.exists():
            index = self.index_values.numpy()

            def store() -> None:
                file.create(index, epoch, step, values, attrs)
        else:
            known = None if self._file_synced else list(self.scored[:-1])

            def store() -> None:
                if known is not None:
                    # resumed run: drop the file's records written after the restored checkpoint
                    file.keep(known)
                file.append(epoch, step, values, attrs)

        self._file_synced = True
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="DifficultyScores")
        self._pending = self._writer.submit(store)
        rank_zero_info(f"DifficultyScores: writing epoch {epoch} to {path}")

    def _flush(self) -> None:
        """Wait for the record in flight; its write error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except OSError as err:
            raise OSError(
                f"DifficultyScores could not write its scores to {self._resolved_path}: {err}. "
                "Pass a writable file as `path`; records written before are intact."
            ) from err

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks; a thread pool cannot be pickled
        self._flush()
        return {**self.__dict__, "_writer": None, "_pending": None}


class _FeatureHook:
    """Forward hook storing a module's output on the CPU (picklable, unlike a closure)."""

    def __init__(self, store: list[Tensor]) -> None:
        self.store = store
        self.enabled = False

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self.enabled:
            self.store.append(output.detach().flatten(1).cpu())
