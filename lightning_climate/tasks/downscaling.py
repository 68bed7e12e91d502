"""Downscaling (super-resolution) of gridded fields as a LightningModule."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_climate.layers.constrained import ConstrainedModel
from lightning_climate.layers.constraints import ConstraintName
from lightning_climate.layers.normalization import Normalizer
from lightning_climate.losses import soft_constraint_loss
from lightning_climate.metrics.latitude_weighted_rmse import LatitudeWeightedRMSE
from lightning_climate.metrics.relative_l2 import RelativeL2Error, relative_l2_error
from lightning_climate.tasks.base import BaseTask

__all__ = ["DownscalingTask"]

Loss = Literal["mse", "l1", "relative_l2", "soft_constraint"]
_PHYSICAL = ("MSE", "MAE", "RelativeL2")
_NORMALISED = ("PSNR", "SSIM")


class DownscalingTask(BaseTask):
    """Learn a map from low-resolution fields ``lr`` to high-resolution fields ``hr``.

    Batches are dicts with ``lr`` (B, C, h, w), ``hr`` (B, C, H, W), ``index`` (B,) and
    optionally ``lat`` (B, H), in physical units. The factor of each batch is ``H / h``, and the
    model is called as ``model(lr, factor)``, so a model such as
    :class:`~lightning_climate.models.DFNO` is trained at one factor and tested at others.

    Fields are normalised inside the task by one per-channel min–max map fitted on the
    datamodule's ``hr_min``/``hr_max`` training statistics (buffers, so checkpoints carry it). The
    same map is applied to ``lr`` and ``hr``, which keeps block means intact. The loss is computed
    in normalised units; MSE, MAE and relative L2 in physical units; PSNR (and SSIM if
    ``ssim_kernel_size`` is set) in normalised units with a data range of 1, which equals
    PSNR/SSIM in physical units with the training range as data range. Batches that carry ``lat``
    also get the latitude-weighted RMSE of every channel, ``LatRMSE_<channel>`` (channel names
    from the datamodule's ``channels``; no suffix for one channel).

    Names follow the base rule: ``train_MSE``, ``val_MSE``, ``test_x4_MSE`` for the named test set
    ``x4``, ``test_LatRMSE_t850`` for a single test set.

    Args:
        model: a module called as ``model(lr, factor)``; YAML gives it as ``class_path``/``init_args``.
        in_channels: channels of the fields.
        loss: ``"mse"``, ``"l1"``, ``"relative_l2"`` (per-sample, as in DFNO) or
            ``"soft_constraint"`` (Harder et al.'s soft baseline, ``(1 - alpha)·MSE(ŷ, y) +
            alpha·MSE(pool(ŷ), x)``), in normalised units.
        alpha: weight of the conservation term of ``"soft_constraint"``.
        constraint: hard layer put after ``model``: a name (``"none"``, ``"add"``, ``"mult"``,
            ``"softmax"``, ``"scadd"``; see :class:`~lightning_climate.layers.ConstrainedModel`) or
            a layer called as ``layer(y, lr)``, e.g. ``{class_path: OrderingConstraint,
            init_args: {order: [0, 1]}}`` in YAML. It acts in normalised units against the
            normalised input, at the factor of each call. ``"softmax"`` accepts inputs below the
            training minimum (they give negative blocks).
        normalization: ``"channel"`` (one min–max range per channel) or ``"shared"`` (one range
            for all channels, so an order between channels holds in normalised units too; use it
            with an ordering constraint).
        check_finite: with a named constraint, raise naming the layer when its input or output
            holds NaN or Inf (one device sync per call); off, a non-finite value stays in its block.
        predict_factor: factor used by ``predict`` for batches that carry no ``hr`` grid.
        ssim_kernel_size: Gaussian window of SSIM (odd; every grid must be at least this large);
            ``None`` leaves SSIM out.
        optimizer: optimizer callable (``None``: AdamW), see :class:`~lightning_climate.tasks.BaseTask`.
        lr_scheduler: optional scheduler callable.
    """

    ignore = (*BaseTask.ignore, "constraint")

    def __init__(
        self,
        model: nn.Module,
        in_channels: int = 1,
        loss: Loss = "mse",
        alpha: float = 0.99,
        constraint: ConstraintName | nn.Module = "none",
        normalization: Literal["channel", "shared"] = "channel",
        check_finite: bool = False,
        predict_factor: float = 2.0,
        ssim_kernel_size: int | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if loss not in ("mse", "l1", "relative_l2", "soft_constraint"):
            raise ValueError(
                f"loss must be one of 'mse', 'l1', 'relative_l2', 'soft_constraint', got {loss!r}."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if normalization not in ("channel", "shared"):
            raise ValueError(f"normalization must be 'channel' or 'shared', got {normalization!r}.")
        if ssim_kernel_size is not None and (ssim_kernel_size < 3 or ssim_kernel_size % 2 == 0):
            raise ValueError(
                f"ssim_kernel_size must be an odd integer >= 3, got {ssim_kernel_size}."
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels}.")
        # read by configure_models inside super().__init__ (a module cannot be an attribute yet)
        object.__setattr__(self, "_constraint", constraint)
        super().__init__(model, optimizer=optimizer, lr_scheduler=lr_scheduler)
        del self.__dict__["_constraint"]
        if not isinstance(constraint, nn.Module):
            self.hparams["constraint"] = constraint

    def configure_models(self) -> None:
        """Put the hard constraint layer after the model."""
        constraint = self._constraint
        if isinstance(constraint, str) and constraint == "none":
            return
        if isinstance(self.model, ConstrainedModel) and self.model.constraint is not None:
            raise ValueError(
                f"the model already ends in the {self.model.constraint_name!r} constraint; set "
                "DownscalingTask(constraint='none') or remove the ConstrainedModel wrapper."
            )
        named = isinstance(constraint, str)
        self.model = ConstrainedModel(
            self.model,
            constraint,
            allow_negative=named and constraint == "softmax",
            check_finite=named and self.hparams["check_finite"],
        )

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """One min–max map from the training ``hr`` fields, shared by ``lr`` and ``hr``."""
        shared = self.hparams["normalization"] == "shared"
        return {"hr": Normalizer("hr", "minmax", eps=1e-5, share_channels=shared)}

    def configure_metrics(self) -> MetricCollection:
        """MSE, MAE, relative L2 (physical), PSNR, SSIM (normalised), LatRMSE per channel."""
        metrics: dict[str, Any] = {
            "MSE": MeanSquaredError(),
            "MAE": MeanAbsoluteError(),
            "RelativeL2": RelativeL2Error(),
            "PSNR": PeakSignalNoiseRatio(data_range=1.0),
        }
        if self.hparams["ssim_kernel_size"] is not None:
            metrics["SSIM"] = StructuralSimilarityIndexMeasure(
                data_range=1.0, kernel_size=self.hparams["ssim_kernel_size"]
            )
        for name in self._latitude_names():
            metrics[name] = LatitudeWeightedRMSE()
        return MetricCollection(metrics, compute_groups=False)

    def _latitude_names(self) -> list[str]:
        count = self.hparams["in_channels"]
        if count == 1:
            return ["LatRMSE"]
        names = self.datamodule_attribute("channels")
        if not (isinstance(names, list | tuple) and len(names) == count):
            names = [str(c) for c in range(count)]
        return [f"LatRMSE_{name}" for name in names]

    @property
    def normalizer(self) -> Normalizer:
        """The min–max map of ``lr`` and ``hr``."""
        normalizer = self.normalizers["hr"]
        assert isinstance(normalizer, Normalizer)
        return normalizer

    def forward(self, lr: Tensor, factor: float) -> Tensor:
        """Downscale physical ``lr`` (B, C, h, w) by ``factor``; returns physical units."""
        return self.normalizer.inverse(self.model(self.normalizer(lr), factor))

    def _loss(self, pred: Tensor, target: Tensor, lowres: Tensor) -> Tensor:
        name = self.hparams["loss"]
        if name == "mse":
            return F.mse_loss(pred, target)
        if name == "l1":
            return F.l1_loss(pred, target)
        if name == "soft_constraint":
            return soft_constraint_loss(pred, target, lowres, self.hparams["alpha"])
        return relative_l2_error(pred, target)

    def shared_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int = 0) -> Tensor:
        """Loss of one batch; logs it and the metrics under the stage and loader prefix."""
        lr, hr = batch["lr"], batch["hr"]
        lr_norm, hr_norm = self.normalizer(lr), self.normalizer(hr)
        pred_norm = self.model(lr_norm, _factor(lr, hr))
        if pred_norm.shape != hr.shape:
            raise RuntimeError(
                f"the model returned shape {tuple(pred_norm.shape)} for a target of shape "
                f"{tuple(hr.shape)}; it must be called as model(lr, factor) and return the target grid."
            )
        loss = self._loss(pred_norm, hr_norm, lr_norm)
        size = hr.shape[0]
        self.log_loss(stage, loss, size, dataloader_idx)
        metrics = self.stage_metrics(stage, dataloader_idx)
        pred_norm = pred_norm.detach()
        pred = self.normalizer.inverse(pred_norm)
        updated = [*_PHYSICAL, *(n for n in _NORMALISED if n in metrics)]
        for name in _PHYSICAL:
            metrics[name].update(pred, hr)
        for name in _NORMALISED:
            if name in metrics:
                metrics[name].update(pred_norm, hr_norm)
        if "lat" in batch:
            for c, name in enumerate(self._latitude_names()):
                metrics[name].update(pred[:, c], hr[:, c], latitudes=batch["lat"])
                updated.append(name)
        self.log_dict(
            {f"{metrics.prefix}{name}": metrics[name] for name in updated},
            batch_size=size,
            add_dataloader_idx=False,
        )
        return loss

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
