"""Climate-model emulation task: forcings (B, T, C_in, H, W) -> climate fields (B, T, C_out, H, W).

The model trains on fields z-scored with the training statistics of each sample's climate model
(``x_mean``/``x_std``, ``y_mean``/``y_std`` of the datamodule, grouped by ``model_id``) with a
latitude-weighted MSE, and every metric is reported in physical units: a
:class:`~lightning_climate.metrics.LatitudeWeightedRMSE` per output variable, logged as
``{prefix}LatRMSE_<var>`` (the ClimateSet reference reported z-units only). With a
:class:`~lightning_climate.models.SuperEmulator`, each sample's ``model_id`` picks its decoder
head, and test metrics come per test loader, i.e. per ``"{scenario}_{climate_model}"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lightning_climate.layers.normalization import Normalizer
from lightning_climate.metrics.latitude_weighted_rmse import (
    LatitudeWeightedRMSE,
    latitude_weighted_mse,
    latitude_weights,
)
from lightning_climate.models.super_emulator import SuperEmulator
from lightning_climate.tasks.base import BaseTask

__all__ = ["EmulationTask"]


class EmulationTask(BaseTask):
    """Train and evaluate a climate emulator (single model or super emulator).

    Batches are dicts with ``x`` (B, T, C_in, H, W) and ``y`` (B, T or 1, C_out, H, W) in physical
    units, and ``model_id`` (B,).

    Args:
        model: an emulator mapping (B, T, C_in, H, W) to (B, T, C_out, H, W), e.g.
            :class:`~lightning_climate.models.UNet`, or a
            :class:`~lightning_climate.models.SuperEmulator`.
        loss: ``"lat_mse"`` (latitude-weighted MSE, default) or ``"mse"``.
        out_vars: names of the output variables in metric names (``val_LatRMSE_tas``); ``None``
            takes the datamodule's ``channels``.
        latitudes: latitudes (degrees) of the grid rows; ``None`` takes the datamodule's
            ``latitudes`` (read from the data files).
        optimizer: injected optimizer callable; ``None``: AdamW with its defaults.
        lr_scheduler: injected scheduler callable.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Literal["lat_mse", "mse"] = "lat_mse",
        out_vars: Sequence[str] | None = None,
        latitudes: Sequence[float] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if loss not in ("lat_mse", "mse"):
            raise ValueError(f"loss must be 'lat_mse' or 'mse', got {loss!r}.")
        super().__init__(model, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.lat_weights: Tensor
        self.register_buffer("lat_weights", torch.ones(0), persistent=False)

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """z-scores of ``x`` and ``y`` per climate model (``model_id``) and variable."""
        return {key: Normalizer(key, "zscore", channel_dim=2, grouped=True) for key in ("x", "y")}

    def _latitudes(self) -> Tensor:
        latitudes = self.hparams["latitudes"]
        if latitudes is None:
            latitudes = self.datamodule_attribute("latitudes")
        if latitudes is None:
            raise ValueError(
                "EmulationTask needs the grid latitudes: pass `latitudes=` or use a datamodule "
                "with `latitudes` (e.g. ClimateSetDataModule)."
            )
        return torch.as_tensor(latitudes, dtype=torch.float64).flatten()

    def out_vars(self) -> list[str]:
        """Names of the output variables: ``out_vars``, the datamodule's ``channels``, or indices."""
        names = self.hparams["out_vars"] or self.datamodule_attribute("channels")
        if names is None:
            raise ValueError(
                "EmulationTask needs the output variable names: pass `out_vars=` or use a "
                "datamodule with `channels` (e.g. ClimateSetDataModule)."
            )
        return [str(n) for n in names]  # type: ignore[union-attr]

    def configure_metrics(self) -> MetricCollection:
        """Latitude-weighted RMSE (physical units) of every output variable."""
        latitudes = self._latitudes()
        return MetricCollection(
            {f"LatRMSE_{var}": LatitudeWeightedRMSE(latitudes) for var in self.out_vars()},
            compute_groups=False,
        )

    def setup(self, stage: str) -> None:
        """Latitude weights of the loss, then the base's metric collections."""
        self.lat_weights = latitude_weights(self._latitudes()).float().to(self.device)
        super().setup(stage)

    def forward(self, x: Tensor, model_id: Tensor | None = None) -> Tensor:
        """Predict physical outputs from physical forcings; ``model_id`` picks super-emulator heads."""
        if model_id is None:
            if isinstance(self.model, SuperEmulator):
                raise ValueError("A SuperEmulator needs the batch's `model_id`.")
            model_id = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pred = self._model(self.normalizers["x"](x, model_id), model_id)
        return self.normalizers["y"].inverse(pred, model_id)

    def _model(self, x: Tensor, model_id: Tensor) -> Tensor:
        return self.model(x, model_id) if isinstance(self.model, SuperEmulator) else self.model(x)

    def _predict(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised prediction and target."""
        model_id = batch["model_id"]
        pred = self._model(self.normalizers["x"](batch["x"], model_id), model_id)
        target = self.normalizers["y"](batch["y"], model_id)
        if target.shape[1] == 1 and pred.shape[1] > 1:  # seq-to-one: the last month
            pred = pred[:, -1:]
        if pred.shape != target.shape:
            raise ValueError(
                f"Model output {tuple(pred.shape)} does not match target {tuple(target.shape)}; "
                f"check the model's out_channels ({len(self.out_vars())} out_vars) and grid size."
            )
        return pred, target

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.hparams["loss"] == "mse":
            return nn.functional.mse_loss(pred, target)
        if pred.shape[-2] != self.lat_weights.numel():
            raise ValueError(
                f"Grid has {pred.shape[-2]} latitudes but {self.lat_weights.numel()} latitude "
                "weights were built; pass the data's latitudes."
            )
        return latitude_weighted_mse(pred, target, self.lat_weights)

    def shared_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int = 0) -> Tensor:
        """Loss of one batch; logs it and the metrics under the stage and loader prefix."""
        pred, target = self._predict(batch)
        loss = self._loss(pred, target)
        size = batch["x"].shape[0]
        self.log_loss(stage, loss, size, dataloader_idx)
        pred_phys = self.normalizers["y"].inverse(pred.detach(), batch["model_id"])
        metrics = self.stage_metrics(stage, dataloader_idx)
        for channel, var in enumerate(self.out_vars()):
            metrics[f"LatRMSE_{var}"].update(pred_phys[:, :, channel], batch["y"][:, :, channel])
        self.log_metrics(metrics, size, on_step=False, on_epoch=True)
        return loss

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Predictions in physical units with the samples' ``index`` and ``model_id``."""
        pred, _ = self._predict(batch)
        pred = self.normalizers["y"].inverse(pred, batch["model_id"])
        return {"pred": pred, "index": batch["index"], "model_id": batch["model_id"]}
