"""CatalystTask: relaxed-energy (IS2RE) and energy/force (S2EF) prediction on OC20 graphs.

The model predicts energies in units of the training standard deviation; targets are normalised
with the buffers ``target_mean`` / ``target_std`` (copied from the datamodule's training statistics
at ``setup`` and saved in checkpoints; OC20's IS2RE values are the defaults). Forces are scaled by
the same std. Metrics are reported in eV and eV/Å, per validation/test set (``val_id_energy_mae``,
``val_ood_ads_energy_ewt``, ...). Gradient and mixed force heads need
``Trainer(inference_mode=False)`` for validation.

The ``pooling`` energy head returns an auxiliary (min-cut and orthogonality) loss; it is added to
the loss with weight ``pool_loss_weight`` in every stage, so ``val_loss`` is the training
objective, and logged with its terms as ``{stage}_aux_loss``, ``{stage}_pool_mincut``,
``{stage}_pool_mincut_ho`` and ``{stage}_pool_ortho`` (evaluation values averaged over
processes under DDP).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch_geometric.data import Data
from torchmetrics import MetricCollection

from lightning_climate.metrics.catalyst import (
    EnergyForceWithinThreshold,
    EnergyMAE,
    EnergyWithinThreshold,
    ForceCosineSimilarity,
    ForceMAE,
)
from lightning_climate.models.catalyst import AdsCat, CatalystModel
from lightning_climate.models.heads import EnergyKind, ForceKind
from lightning_climate.tasks.base import BaseTask

__all__ = ["OC20_IS2RE_MEAN", "OC20_IS2RE_STD", "CatalystTask"]

#: OC20 IS2RE (all) training statistics of y_relaxed, eV.
OC20_IS2RE_MEAN = -1.525913953781128
OC20_IS2RE_STD = 2.279365062713623
_TARGET = {"is2re": "y_relaxed", "s2ef": "energy"}
_AUX_KEYS = ("aux_loss", "pool_mincut", "pool_mincut_ho", "pool_ortho")


class CatalystTask(BaseTask):
    """Train a :class:`~lightning_climate.models.catalyst.CatalystModel` on OC20 batches.

    Args:
        task: ``"is2re"`` (target ``y_relaxed`` from the initial structure) or ``"s2ef"``
            (``energy`` and ``force``; needs a force head).
        hidden_channels: atom feature width.
        num_filters: SchNet filter width.
        num_interactions: interaction blocks.
        num_gaussians: radial basis size.
        cutoff: filter radius (Å).
        phast_embedding: PhAST embeddings (Z, tag, period, group, physical properties).
        energy_head: ``sum``, ``mean``, ``weighted_initial``, ``weighted_final`` or ``pooling``
            (soft cluster pooling with HoscPool-style regularisers; ``ads_cat='none'``, no frame
            averaging).
        force_head: ``none``, ``gradient``, ``direct`` or ``mixed`` (S2EF).
        ads_cat: catalyst-adsorbate variant (``none``, ``separate_pooling``, ``independent``,
            ``attention``); pair with the datamodule's ``disconnected=True`` as in the paper.
        frame_averaging: ``none``, ``2D`` or ``3D``: FAENet-style frame averaging of a model
            that sees raw edge vectors (see :class:`CatalystModel`).
        fa_se3: average over proper rotations only.
        backbone: ``schnet`` or ``dimenet++`` (PyG blocks with our periodic triplets).
        pool_clusters: clusters per graph of the ``pooling`` head.
        pool_mixing: weight in [0, 1] of its first-order min-cut term against the triangle-motif
            term.
        pool_loss_weight: weight (>= 0) of the pooling head's auxiliary loss.
        num_spherical: DimeNet++ spherical harmonics (construction time grows fast with it).
        num_radial: DimeNet++ radial basis functions.
        force_coefficient: weight of the force loss (S2EF).
        consistency_coefficient: weight of the mixed head's direct-vs-gradient loss.
        target_mean: energy mean (eV) used until the datamodule provides training statistics.
        target_std: energy std (eV), idem.
        stats_from_datamodule: copy ``target_mean``/``target_std`` from the datamodule at fit.
        optimizer: injected optimizer callable.
        lr_scheduler: injected scheduler callable.
    """

    def __init__(
        self,
        task: Literal["is2re", "s2ef"] = "is2re",
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        cutoff: float = 6.0,
        phast_embedding: bool = False,
        energy_head: EnergyKind = "sum",
        force_head: ForceKind = "none",
        ads_cat: AdsCat = "none",
        frame_averaging: Literal["none", "2D", "3D"] = "none",
        fa_se3: bool = False,
        backbone: Literal["schnet", "dimenet++"] = "schnet",
        pool_clusters: int = 4,
        pool_mixing: float = 0.5,
        pool_loss_weight: float = 1.0,
        num_spherical: int = 7,
        num_radial: int = 6,
        force_coefficient: float = 10.0,
        consistency_coefficient: float = 1.0,
        target_mean: float = OC20_IS2RE_MEAN,
        target_std: float = OC20_IS2RE_STD,
        stats_from_datamodule: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if task not in _TARGET:
            raise ValueError(f"task must be 'is2re' or 's2ef', got {task!r}.")
        if task == "s2ef" and force_head == "none":
            raise ValueError("S2EF predicts forces: set force_head to gradient, direct or mixed.")
        if target_std <= 0:
            raise ValueError(f"target_std must be positive, got {target_std}.")
        if not pool_loss_weight >= 0:
            raise ValueError(
                f"pool_loss_weight must be >= 0 (0 trains the pooling head without its "
                f"regulariser), got {pool_loss_weight}."
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.task = task
        self.target_key = _TARGET[task]
        self.force_coefficient = force_coefficient
        self.consistency_coefficient = consistency_coefficient
        self.pool_loss_weight = pool_loss_weight
        self.stats_from_datamodule = stats_from_datamodule
        self.model = CatalystModel(
            hidden_channels,
            num_filters,
            num_interactions,
            num_gaussians,
            cutoff,
            phast_embedding,
            energy_head,
            force_head if task == "s2ef" else "none",
            ads_cat,
            frame_averaging,
            fa_se3,
            backbone,
            pool_clusters=pool_clusters,
            pool_mixing=pool_mixing,
            num_spherical=num_spherical,
            num_radial=num_radial,
        )
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.train_metrics = self._metrics("train_")
        self.eval_metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}

    def _metrics(self, prefix: str) -> MetricCollection:
        metrics: dict[str, Any] = {
            "energy_mae": EnergyMAE(),
            "energy_ewt": EnergyWithinThreshold(0.02),
        }
        if self.task == "s2ef":
            metrics |= {
                "force_mae": ForceMAE(),
                "force_cos": ForceCosineSimilarity(),
                "efwt": EnergyForceWithinThreshold(),
            }
        return MetricCollection(metrics).clone(prefix=prefix)

    def setup(self, stage: str) -> None:
        """Copy training statistics from the datamodule and build one metric set per loader."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if (
            stage == "fit"
            and self.stats_from_datamodule
            and getattr(datamodule, "target_mean", None) is not None
        ):
            self.target_mean.fill_(float(datamodule.target_mean))  # type: ignore[union-attr]
            self.target_std.fill_(float(datamodule.target_std))  # type: ignore[union-attr]
        for split in ("val", "test"):
            try:
                names = datamodule.dataloader_names(split)  # type: ignore[union-attr]
            except (AttributeError, MisconfigurationException):  # no datamodule / no such split
                names = [split]
            self._loader_names[split] = names
            for name in names:
                if name not in self.eval_metrics:
                    self.eval_metrics[name] = self._metrics(f"{name}_")

    def forward(self, batch: Data) -> dict[str, Tensor]:
        """Model outputs in eV (``energy``) and eV/Å (``forces``)."""
        out = self.model(batch)
        result = {"energy": out["energy"] * self.target_std + self.target_mean}
        if "forces" in out:
            result["forces"] = out["forces"] * self.target_std
        return result

    def _target(self, batch: Data) -> Tensor:
        target = getattr(batch, self.target_key, None)
        if target is None:
            raise KeyError(
                f"the batch has no `{self.target_key}`, the {self.task.upper()} target; use "
                f"OC20DataModule(task='{self.task}') or files with that field."
            )
        return target.reshape(-1).to(self.target_mean.dtype)

    def _step(
        self, batch: Data, metrics: MetricCollection, prefix: str, sync_dist: bool = False
    ) -> Tensor:
        out = self.model(batch)
        target = self._target(batch)
        loss = F.l1_loss(out["energy"], (target - self.target_mean) / self.target_std)
        if "aux_loss" in out:
            loss = loss + self.pool_loss_weight * out["aux_loss"]
            self.log_dict(
                {f"{prefix}{k}": out[k].detach() for k in _AUX_KEYS},
                batch_size=int(batch.num_graphs),
                sync_dist=sync_dist,
                add_dataloader_idx=False,
            )
        energy = out["energy"].detach() * self.target_std + self.target_mean
        values: dict[str, Tensor] = {"energy_pred": energy, "energy_target": target}
        if self.task == "s2ef":
            fixed = getattr(batch, "fixed", None)
            free = (
                ~fixed.bool()
                if fixed is not None
                else torch.ones_like(batch.tags, dtype=torch.bool)
            )
            force_target = batch.force / self.target_std
            loss = loss + self.force_coefficient * F.l1_loss(
                out["forces"][free], force_target[free]
            )
            if "forces_gradient" in out:
                consistency = F.l1_loss(out["forces"][free], out["forces_gradient"][free].detach())
                loss = loss + self.consistency_coefficient * consistency
            values |= {
                "force_pred": out["forces"].detach() * self.target_std,
                "force_target": batch.force,
                "force_mask": free,
                "batch": batch.batch,
            }
        metrics.update(**values)
        return loss

    def training_step(self, batch: Data, batch_idx: int) -> Tensor:
        """L1 loss on normalised energies (plus forces for S2EF, plus the pooling aux loss)."""
        loss = self._step(batch, self.train_metrics, "train_")
        size = int(batch.num_graphs)
        self.log("train_loss", loss, batch_size=size, prog_bar=True)
        self.log_dict(self.train_metrics, batch_size=size)
        return loss

    def _eval_step(self, split: str, batch: Data, dataloader_idx: int) -> None:
        name = self._loader_names.get(split, [split])[dataloader_idx]
        metrics = self.eval_metrics[name]
        loss = self._step(batch, metrics, f"{name}_", sync_dist=True)
        size = int(batch.num_graphs)
        self.log(f"{name}_loss", loss, batch_size=size, add_dataloader_idx=False)
        if dataloader_idx == 0 and name != f"{split}":
            self.log(f"{split}_loss", loss, batch_size=size, add_dataloader_idx=False)
        self.log_dict(metrics, batch_size=size, add_dataloader_idx=False)

    def validation_step(self, batch: Data, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss and metrics of one validation set (``val_id``, ``val_ood_ads``, ...)."""
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Data, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss and metrics of one test set."""
        self._eval_step("test", batch, dataloader_idx)

    def predict_step(
        self, batch: Data, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Energies (eV) with the dataset ``index`` of each system."""
        out = self(batch)
        return {"index": batch.index, **{k: v.detach() for k, v in out.items()}}
