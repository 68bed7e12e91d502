"""Climate-model emulation task: forcings (B, T, C_in, H, W) -> climate fields (B, T, C_out, H, W).

The model trains on z-scored fields (as the datamodule delivers them) with a latitude-weighted
MSE, and every metric is reported in physical units: predictions are mapped back with the batch's
``y_mean``/``y_std`` before a :class:`~lightning_climate.metrics.LatitudeWeightedRMSE` per output
variable is updated (the ClimateSet reference reported z-units only). With a
:class:`~lightning_climate.models.SuperEmulator`, each sample's ``model_id`` picks its decoder
head, and test metrics come per test loader, i.e. per ``"{scenario}_{climate_model}"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torchmetrics import MetricCollection

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

    Batches are dicts with ``x``, ``y`` (normalised), ``model_id`` and optionally ``y_mean`` and
    ``y_std`` (B, 1, C_out, 1, 1); without them, metrics are computed on ``y`` as given.

    Args:
        model: an emulator mapping (B, T, C_in, H, W) to (B, T, C_out, H, W), e.g.
            :class:`~lightning_climate.models.UNet`, or a
            :class:`~lightning_climate.models.SuperEmulator`.
        out_vars: names of the output variables, used in metric names (``val_RMSE_tas``).
        loss: ``"lat_mse"`` (latitude-weighted MSE, default) or ``"mse"``.
        latitudes: latitudes (degrees) of the grid rows; ``None`` reads the datamodule's
            ``latitudes`` (taken from the data files) in ``setup``.
        optimizer: injected optimizer callable.
        lr_scheduler: injected scheduler callable.
    """

    def __init__(
        self,
        model: nn.Module,
        out_vars: Sequence[str] = ("tas", "pr"),
        loss: Literal["lat_mse", "mse"] = "lat_mse",
        latitudes: Sequence[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if loss not in ("lat_mse", "mse"):
            raise ValueError(f"loss must be 'lat_mse' or 'mse', got {loss!r}.")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.out_vars = list(out_vars)
        self.loss_name = loss
        self.latitudes = None if latitudes is None else [float(v) for v in latitudes]
        self.metrics = nn.ModuleDict()
        self.lat_weights: Tensor
        self.register_buffer("lat_weights", torch.ones(0), persistent=False)

    def _loader_names(self, split: str) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "dataloader_names", None)
        try:
            return names(split) if names is not None else [split]
        except MisconfigurationException:  # the datamodule has no such split yet
            return [split]

    def setup(self, stage: str) -> None:
        """Build latitude weights and the per-stage, per-variable metrics from the data's grid."""
        latitudes = self.latitudes
        if latitudes is None:
            latitudes = getattr(getattr(self.trainer, "datamodule", None), "latitudes", None)
        if latitudes is None:
            raise ValueError(
                "EmulationTask needs the grid latitudes: pass `latitudes=` or use a datamodule "
                "with a `latitudes` attribute (e.g. ClimateSetDataModule)."
            )
        self.lat_weights = latitude_weights(latitudes).float().to(self.device)
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": []}[
            stage
        ]
        for split in splits:
            for name in self._loader_names(split):
                prefix = f"{split}_" if name == split else f"{split}_{name}_"
                # "<key>_metrics": a bare "train" would clash with nn.Module.train
                self.metrics[f"{prefix}metrics"] = nn.ModuleDict(
                    {
                        var: MetricCollection(
                            {"RMSE": LatitudeWeightedRMSE(latitudes)},
                            prefix=prefix,
                            postfix=f"_{var}",
                        )
                        for var in self.out_vars
                    }
                )

    def forward(self, x: Tensor, model_id: Tensor | None = None) -> Tensor:
        """Predict normalised outputs; ``model_id`` selects the heads of a super emulator."""
        if isinstance(self.model, SuperEmulator):
            if model_id is None:
                raise ValueError("A SuperEmulator needs the batch's `model_id`.")
            return self.model(x, model_id)
        return self.model(x)

    def _predict(self, batch: dict[str, Tensor]) -> Tensor:
        pred = self(batch["x"], batch.get("model_id"))
        target = batch["y"]
        if target.shape[1] == 1 and pred.shape[1] > 1:  # seq-to-one: the last month
            pred = pred[:, -1:]
        if pred.shape != target.shape:
            raise ValueError(
                f"Model output {tuple(pred.shape)} does not match target {tuple(target.shape)}; "
                f"check the model's out_channels ({len(self.out_vars)} out_vars) and grid size."
            )
        return pred

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "mse":
            return nn.functional.mse_loss(pred, target)
        if pred.shape[-2] != self.lat_weights.numel():
            raise ValueError(
                f"Grid has {pred.shape[-2]} latitudes but {self.lat_weights.numel()} latitude "
                "weights were built; pass the data's latitudes."
            )
        return latitude_weighted_mse(pred, target, self.lat_weights)

    def _physical(self, batch: dict[str, Tensor], values: Tensor) -> Tensor:
        if "y_mean" not in batch:
            return values
        return values * batch["y_std"] + batch["y_mean"]

    def _step(self, batch: dict[str, Tensor], key: str, loss_key: str) -> Tensor:
        pred = self._predict(batch)
        loss = self._loss(pred, batch["y"])
        batch_size = batch["x"].shape[0]
        self.log(loss_key, loss, batch_size=batch_size, sync_dist=True, add_dataloader_idx=False)
        pred_phys = self._physical(batch, pred.detach())
        target_phys = self._physical(batch, batch["y"])
        for channel, collection in enumerate(self.metrics[f"{key}_metrics"].values()):
            collection.update(pred_phys[:, :, channel], target_phys[:, :, channel])
            self.log_dict(
                collection,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                add_dataloader_idx=False,
            )
        return loss

    def _key(self, split: str, dataloader_idx: int) -> str:
        names = self._loader_names(split)
        name = names[dataloader_idx] if dataloader_idx < len(names) else split
        return split if name == split else f"{split}_{name}"

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Latitude-weighted MSE on normalised fields; RMSE per variable in physical units."""
        return self._step(batch, "train", "train_loss")

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Log ``val_loss`` and ``val_RMSE_<var>`` (physical units)."""
        key = self._key("val", dataloader_idx)
        self._step(batch, key, f"{key}_loss")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log ``test_<scenario>_<model>_RMSE_<var>`` per test loader (physical units)."""
        key = self._key("test", dataloader_idx)
        self._step(batch, key, f"{key}_loss")

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Predictions in physical units with the samples' ``index`` and ``model_id``."""
        pred = self._physical(batch, self._predict(batch))
        return {"pred": pred, "index": batch["index"], "model_id": batch["model_id"]}
