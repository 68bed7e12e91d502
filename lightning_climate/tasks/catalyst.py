"""CatalystTask: relaxed-energy (IS2RE) and energy/force (S2EF) prediction on OC20 graphs.

The model predicts energies in units of the training standard deviation: targets are normalised
with the datamodule's ``{target}_mean``/``{target}_std`` training statistics, held by the task's
normaliser and saved in checkpoints. Forces are scaled by the same std. Metrics are reported in eV
and eV/Å, per validation/test set (``val_id_energy_mae``, ``val_ood_ads_energy_ewt``, ...).
Gradient and mixed force heads need ``Trainer(inference_mode=False)`` for validation.

The ``pooling`` energy head returns an auxiliary (min-cut and orthogonality) loss; it is added to
the loss with weight ``pool_loss_weight`` in every stage, so ``val_loss`` is the training
objective, and logged with its terms as ``{prefix}aux_loss``, ``{prefix}pool_mincut``,
``{prefix}pool_mincut_ho`` and ``{prefix}pool_ortho`` (evaluation values averaged over
processes under DDP).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch_geometric.data import Data
from torchmetrics import MetricCollection

from lightning_climate.layers.normalization import Normalizer
from lightning_climate.metrics.catalyst import (
    EnergyForceWithinThreshold,
    EnergyMAE,
    EnergyWithinThreshold,
    ForceCosineSimilarity,
    ForceMAE,
)
from lightning_climate.tasks.base import BaseTask

__all__ = ["OC20_IS2RE_MEAN", "OC20_IS2RE_STD", "CatalystTask"]

#: OC20 IS2RE (all) training statistics of y_relaxed, eV.
OC20_IS2RE_MEAN = -1.525913953781128
OC20_IS2RE_STD = 2.279365062713623
_TARGET = {"is2re": "y_relaxed", "s2ef": "energy"}
_AUX_KEYS = ("aux_loss", "pool_mincut", "pool_mincut_ho", "pool_ortho")


class CatalystTask(BaseTask):
    """Train a :class:`~lightning_climate.models.CatalystModel` on OC20 batches.

    Args:
        model: the network, in YAML ``{class_path: CatalystModel, init_args: {hidden_channels:
            ..., energy_head: ..., force_head: ...}}``.
        task: ``"is2re"`` (target ``y_relaxed`` from the initial structure) or ``"s2ef"``
            (``energy`` and ``force``; needs a model with a force head).
        pool_loss_weight: weight (>= 0) of the ``pooling`` head's auxiliary loss.
        force_coefficient: weight of the force loss (S2EF).
        consistency_coefficient: weight of the mixed head's direct-vs-gradient loss.
        optimizer: injected optimizer callable; ``None``: AdamW with its defaults.
        lr_scheduler: injected scheduler callable.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Literal["is2re", "s2ef"] = "is2re",
        pool_loss_weight: float = 1.0,
        force_coefficient: float = 10.0,
        consistency_coefficient: float = 1.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if task not in _TARGET:
            raise ValueError(f"task must be 'is2re' or 's2ef', got {task!r}.")
        if task == "s2ef" and getattr(model, "force_head", "none") == "none":
            raise ValueError(
                "S2EF predicts forces: give the model a force head (CatalystModel(force_head="
                "'gradient' | 'direct' | 'mixed'))."
            )
        if not pool_loss_weight >= 0:
            raise ValueError(
                f"pool_loss_weight must be >= 0 (0 trains the pooling head without its "
                f"regulariser), got {pool_loss_weight}."
            )
        if task == "is2re" and getattr(model, "force_head", "none") != "none":
            rank_zero_warn(
                "IS2RE predicts no forces, but the model has a force head, which costs compute "
                "(and needs inference_mode=False for gradient heads); build it with "
                "force_head='none'."
            )
        super().__init__(model, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.task = task
        self.target_key = _TARGET[task]

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """z-score of the energy target (a scalar mean and std)."""
        key = _TARGET[self.hparams["task"]]
        return {key: Normalizer(key, "zscore")}

    def configure_metrics(self) -> MetricCollection:
        """Energy MAE and EwT; for S2EF also force MAE, force cosine and EFwT."""
        metrics: dict[str, Any] = {
            "energy_mae": EnergyMAE(),
            "energy_ewt": EnergyWithinThreshold(0.02),
        }
        if self.hparams["task"] == "s2ef":
            metrics |= {
                "force_mae": ForceMAE(),
                "force_cos": ForceCosineSimilarity(),
                "efwt": EnergyForceWithinThreshold(),
            }
        return MetricCollection(metrics)

    @property
    def normalizer(self) -> Normalizer:
        """The energy target's normaliser."""
        normalizer = self.normalizers[self.target_key]
        assert isinstance(normalizer, Normalizer)
        return normalizer

    def forward(self, batch: Data) -> dict[str, Tensor]:
        """Model outputs in eV (``energy``) and eV/Å (``forces``)."""
        out = self.model(batch)
        result = {"energy": self.normalizer.inverse(out["energy"])}
        if "forces" in out:
            result["forces"] = out["forces"] * self.normalizer.scale
        return result

    def _target(self, batch: Data) -> Tensor:
        target = getattr(batch, self.target_key, None)
        if target is None:
            raise KeyError(
                f"the batch has no `{self.target_key}`, the {self.task.upper()} target; use "
                f"OC20DataModule(task='{self.task}') or files with that field."
            )
        return target.reshape(-1).to(self.normalizer.scale.dtype)

    def shared_step(self, stage: str, batch: Data, dataloader_idx: int = 0) -> Tensor:
        """Loss of one batch; logs it and the metrics under the stage and loader prefix."""
        out = self.model(batch)
        target = self._target(batch)
        size = int(batch.num_graphs)
        prefix = self.loader_prefix(stage, dataloader_idx)
        loss = F.l1_loss(out["energy"], self.normalizer(target))
        if "aux_loss" in out:
            loss = loss + self.hparams["pool_loss_weight"] * out["aux_loss"]
            self.log_dict(
                {f"{prefix}{k}": out[k].detach() for k in _AUX_KEYS},
                batch_size=size,
                sync_dist=stage != "train",
                add_dataloader_idx=False,
            )
        std = self.normalizer.scale
        values: dict[str, Tensor] = {
            "energy_pred": self.normalizer.inverse(out["energy"].detach()),
            "energy_target": target,
        }
        if self.task == "s2ef":
            fixed = getattr(batch, "fixed", None)
            free = (
                ~fixed.bool()
                if fixed is not None
                else torch.ones_like(batch.tags, dtype=torch.bool)
            )
            force_target = batch.force / std
            loss = loss + self.hparams["force_coefficient"] * F.l1_loss(
                out["forces"][free], force_target[free]
            )
            if "forces_gradient" in out:
                consistency = F.l1_loss(out["forces"][free], out["forces_gradient"][free].detach())
                loss = loss + self.hparams["consistency_coefficient"] * consistency
            values |= {
                "force_pred": out["forces"].detach() * std,
                "force_target": batch.force,
                "force_mask": free,
                "batch": batch.batch,
            }
        metrics = self.stage_metrics(stage, dataloader_idx)
        metrics.update(**values)
        self.log_loss(stage, loss, size, dataloader_idx)
        self.log_metrics(metrics, size)
        return loss

    def predict_step(
        self, batch: Data, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Energies (eV) with the dataset ``index`` of each system."""
        out = self(batch)
        return {"index": batch.index, **{k: v.detach() for k, v in out.items()}}
