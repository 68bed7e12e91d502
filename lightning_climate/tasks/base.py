"""Template of every task (LightningModule) of the package, after torchgeo's ``BaseTask``.

A task receives its model as a module (``class_path`` in YAML) and its optimizer and scheduler as
callables (dependency injection). Subclasses fill five hooks, all called from ``__init__`` with
``self.hparams`` already set:

- :meth:`BaseTask.configure_models`: check or wrap ``self.model``;
- :meth:`BaseTask.configure_losses`: set the criterion;
- :meth:`BaseTask.configure_normalizers`: one :class:`~lightning_climate.layers.Normalizer` per
  normalised batch key, fitted at ``fit`` start from the datamodule's ``train_statistics()``
  unless a checkpoint already holds its statistics;
- :meth:`BaseTask.shared_step`: the loss of one batch of a stage, which the base's training,
  validation and test steps call;
- :meth:`BaseTask.configure_metrics`: one :class:`~torchmetrics.MetricCollection` that the base
  clones per stage and per named loader; it is called at ``setup``, so it may use the
  datamodule (e.g. its channel names).

Every logged name follows one rule: ``{stage}_{name}`` for a stage with one loader (or a loader
named like the stage) and ``{stage}_{loader}_{name}`` for a named loader, e.g. ``val_MSE``,
``test_x4_MSE``, ``val_ood_ads_energy_mae``. :meth:`BaseTask.log_loss` logs ``{prefix}loss``
and averages it over processes on evaluation stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lightning_climate.callbacks.exact_resume import ExactResume
from lightning_climate.layers.normalization import Normalizer

__all__ = ["BaseTask"]

_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class BaseTask(LightningModule):
    """LightningModule template: injected model, optimizer and scheduler; one naming rule.

    Args:
        model: the network; YAML gives it as ``class_path``/``init_args``.
        optimizer: called with the parameters to optimise, e.g. ``torch.optim.AdamW`` or
            ``functools.partial(torch.optim.SGD, lr=0.1)``; YAML sets it as
            ``{class_path: torch.optim.AdamW, init_args: {lr: 1e-3}}``. ``None`` uses
            :attr:`default_optimizer` with its own defaults. (A class given as the default would
            leak its resolved defaults, e.g. AdamW's ``weight_decay=0.01``, into any other optimizer
            chosen in YAML: jsonargparse keeps init_args across a ``class_path`` change,
            jsonargparse#460.)
        lr_scheduler: optional, called with the optimizer. A
            :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` monitors :attr:`monitor`.
    """

    #: constructor arguments left out of ``hparams`` (modules and callables; the model's weights
    #: are in the checkpoint's state dict, and YAML keeps their configuration).
    ignore: ClassVar[Sequence[str]] = ("model", "optimizer", "lr_scheduler")
    #: metric watched by ReduceLROnPlateau, and a sensible default for checkpoints.
    monitor: ClassVar[str] = "val_loss"
    #: whether :attr:`monitor` should be minimised or maximised.
    mode: ClassVar[str] = "min"
    #: optimizer used when ``optimizer`` is ``None``.
    default_optimizer: ClassVar[OptimizerCallable] = torch.optim.AdamW

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__} takes its model as a torch.nn.Module (in YAML: "
                f"`model: {{class_path: ..., init_args: ...}}`), got {type(model).__name__}."
            )
        self.save_hyperparameters(ignore=list(self.ignore))
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.model = model
        self.configure_models()
        self.configure_losses()
        self.normalizers = nn.ModuleDict(self.configure_normalizers())
        #: metric collections by prefix (``"train_"``, ``"test_x4_"``), built by the base.
        self.metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def configure_models(self) -> None:
        """Check or wrap ``self.model`` (e.g. put a constraint layer after it)."""

    def configure_losses(self) -> None:
        """Set the criterion from ``self.hparams``."""

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """Normalisers of the batch keys this task models, by batch key; none by default."""
        return {}

    def configure_metrics(self) -> MetricCollection | None:
        """The metrics of one loader, without prefix; ``None`` for none."""
        return None

    # ------------------------------------------------------------------ naming and logging
    @staticmethod
    def metric_prefix(stage: str, loader: str | None = None) -> str:
        """``"{stage}_"`` or ``"{stage}_{loader}_"``: the prefix of every logged name."""
        return f"{stage}_" if loader in (None, stage) else f"{stage}_{loader}_"

    def datamodule_attribute(self, name: str) -> Any:
        """An attribute of the attached datamodule (``channels``, ``latitudes``, ...), or ``None``."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, name, None)

    def loader_names(self, stage: str) -> list[str]:
        """Names of the loaders of ``stage``, from the datamodule (``[stage]`` when unnamed)."""
        if stage not in self._loader_names:
            dataloader_names = self.datamodule_attribute("dataloader_names")
            names = None
            if dataloader_names is not None:
                try:
                    names = list(dataloader_names(stage))
                except MisconfigurationException:  # the datamodule has no such split yet
                    names = None
            if names is None:
                count = self._loader_count(stage)
                names = [stage] if count <= 1 else [str(i) for i in range(count)]
            self._loader_names[stage] = names
        return self._loader_names[stage]

    def _loader_count(self, stage: str) -> int:
        if self._trainer is None:
            return 1
        loaders = {
            "train": None,
            "val": "val_dataloaders",
            "test": "test_dataloaders",
            "predict": "predict_dataloaders",
        }[stage]
        found = getattr(self.trainer, loaders, None) if loaders else None
        return len(found) if isinstance(found, list | tuple) else 1

    def loader_prefix(self, stage: str, dataloader_idx: int = 0) -> str:
        """The prefix of loader ``dataloader_idx`` of ``stage``."""
        names = self.loader_names(stage)
        name = names[dataloader_idx] if dataloader_idx < len(names) else str(dataloader_idx)
        return self.metric_prefix(stage, name)

    @property
    def metric_template(self) -> MetricCollection | None:
        """The metrics of one loader from :meth:`configure_metrics`, built once (not a submodule)."""
        if "_metric_template" not in self.__dict__:
            self.__dict__["_metric_template"] = self.configure_metrics()
        return self.__dict__["_metric_template"]

    def stage_metrics(self, stage: str, dataloader_idx: int = 0) -> MetricCollection:
        """The metric collection of one loader, cloned from the template on first use."""
        template = self.metric_template
        if template is None:
            raise RuntimeError(f"{type(self).__name__}.configure_metrics() returned no metrics.")
        prefix = self.loader_prefix(stage, dataloader_idx)
        if prefix not in self.metrics:
            self.metrics[prefix] = template.clone(prefix=prefix).to(self.device)
        collection = self.metrics[prefix]
        assert isinstance(collection, MetricCollection)
        return collection

    def log_loss(
        self, stage: str, loss: Tensor, batch_size: int, dataloader_idx: int = 0, **kwargs: Any
    ) -> None:
        """Log ``{prefix}loss``, averaged over processes on evaluation stages.

        With several named validation loaders, the first one's loss is also logged as
        ``val_loss``, so :attr:`monitor` exists for every datamodule.
        """
        kwargs = {
            "batch_size": batch_size,
            "sync_dist": stage != "train",
            "add_dataloader_idx": False,
            "prog_bar": stage != "test",
            **kwargs,
        }
        prefix = self.loader_prefix(stage, dataloader_idx)
        self.log(f"{prefix}loss", loss.detach(), **kwargs)
        if stage == "val" and dataloader_idx == 0 and prefix != "val_":
            self.log("val_loss", loss.detach(), **kwargs)

    def log_metrics(self, metrics: MetricCollection, batch_size: int, **kwargs: Any) -> None:
        """Log a metric collection as metric objects (reduced over processes at epoch end)."""
        self.log_dict(metrics, batch_size=batch_size, add_dataloader_idx=False, **kwargs)

    # ------------------------------------------------------------------ steps
    def shared_step(self, stage: str, batch: Any, dataloader_idx: int = 0) -> Tensor:
        """Loss of one batch of ``stage`` (``"train"``, ``"val"``, ``"test"``), logging it and the metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement shared_step.")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The training loss of one batch (see :meth:`shared_step`)."""
        return self.shared_step("train", batch)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate one batch of validation loader ``dataloader_idx``."""
        self.shared_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate one batch of test loader ``dataloader_idx`` and log it under its name."""
        self.shared_step("test", batch, dataloader_idx)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        """Build the metric collections of every named loader of ``stage`` on every process."""
        if self.metric_template is None:
            return
        for split in _STAGE_SPLITS.get(stage, ()):
            self._loader_names.pop(split, None)
            for index in range(len(self.loader_names(split))):
                self.stage_metrics(split, index)

    def on_fit_start(self) -> None:
        """Fit every normaliser from the datamodule's training statistics, unless restored."""
        pending = [n for n in self.normalizers.values() if not bool(n.fitted)]
        if not pending:
            return
        datamodule = self.trainer.datamodule
        statistics = getattr(datamodule, "train_statistics", None)
        if statistics is None:
            keys = [n.key for n in pending]
            rank_zero_warn(
                f"{type(self).__name__}: the training data comes without statistics (no "
                f"lightning_climate datamodule), so {keys} are used unnormalised. Fit them with "
                "task.normalizers[key].fit({...}) before training, or use a BaseDataModule."
            )
            return
        stats = statistics()
        for normalizer in pending:
            normalizer.fit(stats)

    def configure_callbacks(self) -> list[Callback]:
        """Callbacks every task brings: :class:`ExactResume`, so resumed runs continue bit for bit."""
        return [ExactResume()]

    def configure_optimizers(self) -> Any:
        """Build the injected optimizer over all trainable parameters, and the scheduler if any.

        An optimizer with a ``bind(module)`` method (e.g. one that needs the model's layers or
        BatchNorm statistics) is bound to this task.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        factory = self.default_optimizer if self.optimizer is None else self.optimizer
        optimizer = factory(params)
        bind = getattr(optimizer, "bind", None)
        if callable(bind):
            bind(self)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
