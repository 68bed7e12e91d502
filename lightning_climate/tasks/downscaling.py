"""Downscaling (super-resolution) of gridded fields as a LightningModule."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_climate.layers.constrained import ConstrainedModel
from lightning_climate.layers.constraints import ConstraintName
from lightning_climate.layers.normalization import MinMaxNormalizer
from lightning_climate.metrics.latitude_weighted_rmse import LatitudeWeightedRMSE
from lightning_climate.metrics.relative_l2 import RelativeL2Error, relative_l2_error
from lightning_climate.tasks.base import BaseTask

__all__ = ["DownscalingTask"]

Loss = Literal["mse", "l1", "relative_l2"]


class DownscalingTask(BaseTask):
    """Learn a map from low-resolution fields ``lr`` to high-resolution fields ``hr``.

    Batches are dicts with ``lr`` (B, C, h, w), ``hr`` (B, C, H, W) and ``index`` (B,). The factor
    of each batch is ``H / h``, and the model is called as ``model(lr, factor)``, so a model such as
    :class:`~lightning_climate.models.DFNO` is trained at one factor and tested at others.

    Fields are normalised inside the task with a per-channel min–max map taken from the
    datamodule's training statistics (``datamodule.train_statistics()`` returning ``min`` and
    ``max``) and stored in buffers, so a checkpoint carries them. The same map is applied to ``lr``
    and ``hr``, which keeps block means intact. The loss is computed in normalised units; MSE, MAE
    and relative L2 in physical units; PSNR (and SSIM if ``ssim_kernel_size`` is set) in normalised
    units with a data range of 1, which equals PSNR/SSIM in physical units with the training range
    as data range (both are invariant under the shared affine map).

    Metrics are logged as ``{stage}_{name}`` for training and validation, and as
    ``test_{loader}_{name}`` for each named test set of the datamodule (for example
    ``test_x4_MSE`` for the zero-shot 4× set).

    Args:
        model: a module called as ``model(lr, factor)``; YAML gives it as ``class_path``/``init_args``.
        in_channels: channels of the fields (size of the normalisation buffers).
        loss: ``"mse"``, ``"l1"`` or ``"relative_l2"`` (per-sample, as in DFNO), in normalised units.
        constraint: hard conservation layer put after ``model`` (``"none"``, ``"add"``, ``"mult"``,
            ``"softmax"``, ``"scadd"``; see :class:`~lightning_climate.layers.ConstrainedModel`). It
            acts in normalised units against the normalised input, at the factor of each call.
            ``"softmax"`` accepts inputs below the training minimum (they give negative blocks)
            rather than failing on test data outside the training range.
        predict_factor: factor used by ``predict`` for batches that carry no ``hr`` grid.
        ssim_kernel_size: Gaussian window of SSIM (odd; every grid must be at least this large);
            ``None`` leaves SSIM out.
        optimizer: optimizer callable, see :class:`~lightning_climate.tasks.BaseTask`.
        lr_scheduler: optional scheduler callable.
    """

    def __init__(
        self,
        model: nn.Module,
        in_channels: int = 1,
        loss: Loss = "mse",
        constraint: ConstraintName = "none",
        predict_factor: float = 2.0,
        ssim_kernel_size: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if loss not in ("mse", "l1", "relative_l2"):
            raise ValueError(f"loss must be one of 'mse', 'l1', 'relative_l2', got {loss!r}.")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        if constraint != "none":
            if isinstance(model, ConstrainedModel) and model.constraint is not None:
                raise ValueError(
                    f"the model already ends in the {model.constraint_name!r} constraint; set "
                    "DownscalingTask(constraint='none') or remove the ConstrainedModel wrapper."
                )
            model = ConstrainedModel(model, constraint, allow_negative=constraint == "softmax")
        self.model = model
        self.loss_name = loss
        self.normalizer = MinMaxNormalizer(in_channels)
        if ssim_kernel_size is not None and (ssim_kernel_size < 3 or ssim_kernel_size % 2 == 0):
            raise ValueError(
                f"ssim_kernel_size must be an odd integer >= 3, got {ssim_kernel_size}."
            )
        self.ssim_kernel_size = ssim_kernel_size
        self.train_metrics = self._stage_metrics("train_")
        self.val_metrics = self._stage_metrics("val_")
        self.test_metrics = nn.ModuleDict()

    def _stage_metrics(self, prefix: str) -> nn.ModuleDict:
        """Metrics of one stage: ``physical`` (physical units) and ``normalised`` (PSNR, SSIM)."""
        physical = MetricCollection(
            {
                "MSE": MeanSquaredError(),
                "MAE": MeanAbsoluteError(),
                "RelativeL2": RelativeL2Error(),
            },
            prefix=prefix,
        )
        image: dict[str, Any] = {"PSNR": PeakSignalNoiseRatio(data_range=1.0)}
        if self.ssim_kernel_size is not None:
            image["SSIM"] = StructuralSimilarityIndexMeasure(
                data_range=1.0, kernel_size=self.ssim_kernel_size
            )
        # one per channel, updated only for batches that carry the latitudes of their rows
        latitude = nn.ModuleList(LatitudeWeightedRMSE() for _ in range(self.hparams["in_channels"]))
        return nn.ModuleDict(
            {
                "physical": physical,
                "normalised": MetricCollection(image, prefix=prefix),
                "latitude": latitude,
            }
        )

    def _log_metrics(
        self,
        metrics: nn.ModuleDict,
        prefix: str,
        pred_norm: Tensor,
        batch: dict[str, Tensor],
        **kwargs: Any,
    ) -> None:
        hr, size = batch["hr"], batch["hr"].shape[0]
        pred_norm = pred_norm.detach()
        pred = self.normalizer.inverse(pred_norm)
        metrics["physical"](pred, hr)
        metrics["normalised"](pred_norm, self.normalizer(hr))
        self.log_dict(metrics["physical"], batch_size=size, **kwargs)
        self.log_dict(metrics["normalised"], batch_size=size, **kwargs)
        if "lat" in batch:
            for c, metric in enumerate(metrics["latitude"]):
                metric(pred[:, c], hr[:, c], latitudes=batch["lat"])
                name = f"{prefix}LatRMSE{self._channel_suffix(c)}"
                self.log(name, metric, batch_size=size, **kwargs)

    def _channel_suffix(self, channel: int) -> str:
        """``""`` for one channel, else ``_<name>`` from ``datamodule.channels`` or ``_<index>``."""
        count = self.hparams["in_channels"]
        if count == 1:
            return ""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "channels", None)
        if isinstance(names, list | tuple) and len(names) == count:
            return f"_{names[channel]}"
        return f"_{channel}"

    def setup(self, stage: str) -> None:
        """Take the normalisation statistics from the datamodule when fitting."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_statistics"):
            stats = datamodule.train_statistics()
            self.normalizer.set_statistics(stats["min"], stats["max"])
            rank_zero_info(
                f"DownscalingTask: min-max normalisation from the training split: "
                f"min={stats['min'].tolist()}, max={stats['max'].tolist()}"
            )

    def forward(self, lr: Tensor, factor: float) -> Tensor:
        """Downscale physical ``lr`` (B, C, h, w) by ``factor``; returns physical units."""
        return self.normalizer.inverse(self.model(self.normalizer(lr), factor))

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "mse":
            return F.mse_loss(pred, target)
        if self.loss_name == "l1":
            return F.l1_loss(pred, target)
        return relative_l2_error(pred, target)

    def _shared_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        lr, hr = batch["lr"], batch["hr"]
        pred_norm = self.model(self.normalizer(lr), _factor(lr, hr))
        if pred_norm.shape != hr.shape:
            raise RuntimeError(
                f"the model returned shape {tuple(pred_norm.shape)} for a target of shape "
                f"{tuple(hr.shape)}; it must be called as model(lr, factor) and return the target grid."
            )
        loss = self._loss(pred_norm, self.normalizer(hr))
        return loss, pred_norm, hr

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Fit one batch; log the loss and the training metrics."""
        loss, pred_norm, hr = self._shared_step(batch)
        self.log("train_loss", loss, batch_size=hr.shape[0], prog_bar=True)
        self._log_metrics(self.train_metrics, "train_", pred_norm, batch)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Evaluate one validation batch."""
        loss, pred_norm, hr = self._shared_step(batch)
        self.log("val_loss", loss, batch_size=hr.shape[0], prog_bar=True)
        self._log_metrics(self.val_metrics, "val_", pred_norm, batch)

    def _test_names(self) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "dataloader_names"):
            return list(datamodule.dataloader_names("test"))
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, list | tuple) else 1
        return [f"dl{i}" for i in range(count)]

    def on_test_start(self) -> None:
        """Create one metric collection per named test set."""
        self.test_metrics = nn.ModuleDict(
            {name: self._stage_metrics(f"test_{name}_") for name in self._test_names()}
        ).to(self.device)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate one batch of the test set ``dataloader_idx`` and log under its name."""
        loss, pred_norm, hr = self._shared_step(batch)
        name = list(self.test_metrics)[dataloader_idx]
        self.log(f"test_{name}_loss", loss, batch_size=hr.shape[0], add_dataloader_idx=False)
        self._log_metrics(
            self.test_metrics[name], f"test_{name}_", pred_norm, batch, add_dataloader_idx=False
        )

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> Any:
        """Downscale ``lr`` to the grid of ``hr`` if the batch has one, else by ``predict_factor``."""
        lr = batch["lr"]
        factor = _factor(lr, batch["hr"]) if "hr" in batch else self.hparams["predict_factor"]
        return self(lr, factor)


def _factor(lr: Tensor, hr: Tensor) -> float:
    """The downscaling factor between two grids, an ``int`` when it is whole."""
    fh, fw = hr.shape[-2] / lr.shape[-2], hr.shape[-1] / lr.shape[-1]
    if fh != fw:
        raise ValueError(
            f"lr {tuple(lr.shape[-2:])} and hr {tuple(hr.shape[-2:])} grids differ by different "
            f"factors along the two axes ({fh:g} and {fw:g}); use one factor for both axes."
        )
    return int(fh) if fh.is_integer() else fh
