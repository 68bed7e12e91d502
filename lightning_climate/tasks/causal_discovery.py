"""Causal discovery on gridded time series with CDSD.

CDSD is by Brouillard et al. (2024); Boussard et al. (2023) apply it to climate model data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection

from lightning_climate.layers.normalization import Normalizer
from lightning_climate.metrics.graph import (
    EdgeF1Score,
    EdgePrecision,
    EdgeRecall,
    StructuralHammingDistance,
    match_latents,
    permute_graph,
)
from lightning_climate.models.cdsd import CDSD
from lightning_climate.tasks.base import BaseTask

__all__ = ["CausalDiscoveryTask"]


class CausalDiscoveryTask(BaseTask):
    """Learn latent regions and a lagged causal graph between them from gridded time windows.

    Batches are dicts whose ``input_key`` entry holds windows of shape ``(B, T, C, H, W)``,
    ``(B, T, C, N)`` or ``(B, T, N)`` (``T >= num_lags + 1`` time steps, ``C = num_variables``
    channels, ``H * W = N = num_locations`` grid cells). The loss, per observed value, is

    ``[-ELBO + sparsity_coeff * sum(edge_probs)] / (C * N) + sum(gamma ⊙ h) + mu/2 * ||h||²``

    with ``h = WᵀW - I`` the orthogonality residual of the non-negative mixing ``W``. ``W`` is
    projected onto ``W >= 0`` after every optimizer step.

    The augmented-Lagrangian state (the multiplier matrix ``gamma``, the penalty ``mu``, the last
    residual, the recent validation NLLs and a converged flag) lives in buffers, so it is saved in
    and restored from checkpoints. It is updated at the end of each validation epoch once the
    sub-problem is stationary, i.e. when the last ``alm_window`` validation NLLs improved by less
    than ``alm_rtol`` (relative): then ``gamma += mu h``, and ``mu *= ortho_mu_mult`` if ``||h||``
    did not drop below ``ortho_omega`` times its value at the previous update. While
    ``||h||_F <= ortho_tolerance`` the constraint counts as converged (``alm_converged``) and the
    state does not change; unlike the reference, which freezes the state for good at the first
    convergence, updates resume if the residual drifts above the tolerance. The updates need a
    validation loop (without one the penalty stays at ``ortho_mu_init``), and since ``gamma`` may
    be negative, so may the logged losses.

    Windows are first standardised with the datamodule's ``{input_key}_mean``/``{input_key}_std``
    training statistics (per climate model with ``group_key``, e.g. ClimateSet's ``model_id``).

    When the datamodule's ``ground_truth()`` gives the true graph (``(lags, nodes, nodes)``, bool)
    and mixing (``(C, N, latents)``), the learned graph (edges with probability
    ``> edge_threshold``) is aligned to the truth with
    :func:`~lightning_climate.metrics.graph.match_latents` and scored at each validation and
    test epoch (``val_SHD``, ``val_F1``, ``val_precision``, ``val_recall``, same for ``test_``).

    Other logged values: ``{stage}_kl``, ``train_ortho_residual``, ``train_ortho_mu``,
    ``train_edge_density`` and ``val_ortho_residual``.

    Args:
        model: a :class:`~lightning_climate.models.CDSD` (YAML: ``class_path: CDSD`` with
            ``num_locations``, ``num_variables``, ``num_latents``, ``num_lags``, ...).
        input_key: batch key of the windows (``"y"`` for ClimateSet outputs, for instance).
        group_key: batch key of each sample's statistics group (``"model_id"`` for ClimateSet),
            or ``None`` for one set of statistics.
        seasonal_period: if positive, remove the seasonal cycle as the reference does: every value
            is standardised with the mean and standard deviation of its phase (time step modulo
            the period), grid cell and variable over the training data. The statistics are
            computed once at the start of ``fit`` from the datamodule's training loader and saved
            in checkpoints. Windows must start at phase 0 (12 for calendar-year monthly windows).
        kl_coeff: weight of the KL term of the ELBO.
        sparsity_coeff: L1 penalty on edge probabilities, in nats per edge and sample.
        ortho_mu_init: initial penalty coefficient ``mu``.
        ortho_mu_mult: factor applied to ``mu`` when the residual shrinks too slowly.
        ortho_omega: required shrink factor of the residual between updates.
        ortho_tolerance: Frobenius norm of ``h`` at which the constraint has converged.
        alm_window: validation epochs compared for stationarity (``1``: update every epoch).
        alm_rtol: relative improvement below which the sub-problem counts as stationary.
        edge_threshold: edge probability above which an edge is in the learned graph.
        optimizer: optimizer callable, e.g. ``torch.optim.Adam``; ``None``: Adam with its defaults.
        lr_scheduler: optional scheduler callable.
    """

    #: CDSD's reference trains with Adam.
    default_optimizer = torch.optim.Adam

    def __init__(
        self,
        model: CDSD,
        input_key: str = "x",
        group_key: str | None = None,
        seasonal_period: int = 0,
        kl_coeff: float = 1.0,
        sparsity_coeff: float = 0.1,
        ortho_mu_init: float = 1.0,
        ortho_mu_mult: float = 2.0,
        ortho_omega: float = 0.5,
        ortho_tolerance: float = 1e-2,
        alm_window: int = 3,
        alm_rtol: float = 1e-3,
        edge_threshold: float = 0.5,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        for name, value in (
            ("kl_coeff", kl_coeff),
            ("sparsity_coeff", sparsity_coeff),
            ("ortho_mu_init", ortho_mu_init),
            ("ortho_tolerance", ortho_tolerance),
            ("alm_rtol", alm_rtol),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if not ortho_mu_mult >= 1:
            raise ValueError(f"ortho_mu_mult must be >= 1, got {ortho_mu_mult}.")
        if not 0 < ortho_omega <= 1:
            raise ValueError(f"ortho_omega must be in (0, 1], got {ortho_omega}.")
        if seasonal_period < 0:
            raise ValueError(
                f"seasonal_period must be >= 0 (0 disables it), got {seasonal_period}."
            )
        if alm_window < 1:
            raise ValueError(f"alm_window must be >= 1, got {alm_window}.")
        if not 0 < edge_threshold < 1:
            raise ValueError(f"edge_threshold must be in (0, 1), got {edge_threshold}.")
        if not isinstance(model, CDSD):
            raise TypeError(
                f"CausalDiscoveryTask needs a CDSD model (YAML: `model: {{class_path: CDSD, "
                f"init_args: ...}}`), got {type(model).__name__}."
            )
        super().__init__(model, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.input_key = input_key
        self.group_key = group_key
        self.seasonal_period = seasonal_period
        self.kl_coeff = kl_coeff
        self.sparsity_coeff = sparsity_coeff
        self.ortho_mu_mult = ortho_mu_mult
        self.ortho_omega = ortho_omega
        self.ortho_tolerance = ortho_tolerance
        self.alm_rtol = alm_rtol
        self.edge_threshold = edge_threshold
        num_variables, num_latents = model.num_variables, model.num_latents
        num_locations = model.num_locations

        self.register_buffer("alm_gamma", torch.zeros(num_variables, num_latents, num_latents))
        self.register_buffer("alm_mu", torch.tensor(float(ortho_mu_init)))
        self.register_buffer("alm_last_residual", torch.tensor(float("inf")))
        self.register_buffer("alm_history", torch.full((alm_window,), float("nan")))
        self.register_buffer("alm_updates", torch.tensor(0))
        self.register_buffer("alm_converged", torch.tensor(False))
        season_shape = (max(seasonal_period, 1), num_variables, num_locations)
        self.register_buffer("seasonal_mean", torch.zeros(season_shape))
        self.register_buffer("seasonal_std", torch.ones(season_shape))
        self.register_buffer("seasonal_ready", torch.tensor(False))

        graph = MetricCollection(
            {
                "SHD": StructuralHammingDistance(),
                "F1": EdgeF1Score(),
                "precision": EdgePrecision(),
                "recall": EdgeRecall(),
            }
        )
        self.val_graph_metrics = graph.clone(prefix="val_")
        self.test_graph_metrics = graph.clone(prefix="test_")
        self.val_nll = MeanMetric()

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """Standardisation of the windows with the training statistics of ``input_key``."""
        key, grouped = self.hparams["input_key"], self.hparams["group_key"] is not None
        return {key: Normalizer(key, "zscore", channel_dim=2, grouped=grouped)}

    def configure_metrics(self) -> MetricCollection:
        """MSE of the one-step prediction."""
        return MetricCollection({"prediction_MSE": MeanSquaredError()})

    # ------------------------------------------------------------------------- helpers
    def _windows(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's windows as ``(B, T, C, N)``, as seasonal anomalies if configured."""
        x = self._raw_windows(batch)
        if not self.seasonal_period:
            return x
        if not bool(self.seasonal_ready):
            raise RuntimeError(
                "seasonal_period is set but the seasonal statistics are missing; run "
                "trainer.fit first, load a checkpoint, or call fit_seasonal_statistics(loader)."
            )
        phase = torch.arange(x.shape[1], device=x.device) % self.seasonal_period
        return (x - self.seasonal_mean[phase]) / self.seasonal_std[phase]

    def _raw_windows(self, batch: dict[str, Tensor]) -> Tensor:
        if self.input_key not in batch:
            raise KeyError(
                f"batch has no key {self.input_key!r} (keys: {sorted(batch)}); set "
                "CausalDiscoveryTask(input_key=...) to the key of the gridded windows."
            )
        x = batch[self.input_key]
        group = batch.get(self.group_key) if self.group_key is not None else None
        if self.group_key is not None and group is None:
            raise KeyError(
                f"batch has no key {self.group_key!r} (keys: {sorted(batch)}); set "
                "CausalDiscoveryTask(group_key=...) to the key of each sample's group, or None."
            )
        x = self.normalizers[self.input_key](x, group)
        if x.ndim == 5:
            return x.flatten(3)
        if x.ndim == 4:
            return x
        if x.ndim == 3:
            return x.unsqueeze(2)
        raise ValueError(
            f"batch[{self.input_key!r}] has shape {tuple(x.shape)}; expected (B, T, C, H, W), "
            "(B, T, C, N) or (B, T, N) windows of gridded fields."
        )

    def orthogonality_residual_norm(self) -> Tensor:
        """``||WᵀW - I||_F`` over all variables (detached)."""
        return self.model.orthogonality_residual().detach().norm()

    def learned_graph(self) -> Tensor:
        """Edges with probability above ``edge_threshold``, ``(lags, nodes, nodes)`` bool."""
        return self.model.edge_probabilities().detach() > self.edge_threshold

    def shared_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int = 0) -> Tensor:
        """Loss of one batch; logs it, the KL and the one-step prediction error."""
        x = self._windows(batch)
        out = self.model(x)
        values = self.model.num_variables * self.model.num_locations
        nll = -(out.reconstruction - self.kl_coeff * out.kl) / values
        sparsity = self.sparsity_coeff * self.model.edge_probabilities().sum() / values
        h = self.model.orthogonality_residual()
        alm = (self.alm_gamma * h).sum() + 0.5 * self.alm_mu * (h**2).sum()
        loss = nll + sparsity + alm

        batch_size = x.shape[0]
        target = x[:, self.model.num_lags :]
        metrics = self.stage_metrics(stage)
        metrics(out.prediction_mean.detach().flatten(), target.flatten())
        self.log_loss(stage, loss, batch_size)
        self.log(f"{stage}_kl", out.kl.detach(), batch_size=batch_size, sync_dist=stage != "train")
        self.log_metrics(metrics, batch_size)
        if stage == "val":
            self.val_nll.update(nll.detach(), weight=batch_size)
        return loss

    # ------------------------------------------------------------------------- Lightning hooks
    def forward(self, x: Tensor) -> Tensor:
        """One-step forecast ``(B, C, N)`` of the last frame of model-space windows ``(B, T, C, N)``."""
        return self.model(x).prediction_mean[:, -1]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Negative ELBO plus sparsity and augmented-Lagrangian terms."""
        loss = self.shared_step("train", batch)
        self.log("train_ortho_residual", self.orthogonality_residual_norm())
        self.log("train_ortho_mu", self.alm_mu)
        self.log("train_edge_density", self.model.edge_probabilities().detach().mean())
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """One-step forecasts ``(B, T - num_lags, C, N)`` of every target frame, with ``index``.

        Forecasts are in the units the model sees: seasonal anomalies if ``seasonal_period`` is set.
        """
        x = self._windows(batch)
        return {"prediction": self.model(x).prediction_mean, "index": batch["index"]}

    @torch.no_grad()
    def fit_seasonal_statistics(self, loader: Iterable[dict[str, Tensor]]) -> None:
        """Per-phase mean and standard deviation of every grid cell over ``loader``'s windows.

        Args:
            loader: training batches (standardised first with this task's normaliser).
        """
        period = self.seasonal_period
        total = torch.zeros(period, *self.seasonal_mean.shape[1:], dtype=torch.float64)
        squares = torch.zeros_like(total)
        count = torch.zeros(period, dtype=torch.float64)
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            x = self._raw_windows(batch).double().cpu()
            phase = torch.arange(x.shape[1]) % period
            total.index_add_(0, phase, x.sum(0))
            squares.index_add_(0, phase, (x**2).sum(0))
            count.index_add_(
                0, phase, torch.full((x.shape[1],), float(x.shape[0]), dtype=torch.float64)
            )
        if (count == 0).any():
            raise ValueError(
                f"the training windows never reach some phase of seasonal_period={period}; "
                "use windows at least one period long or a smaller seasonal_period."
            )
        mean = total / count[:, None, None]
        std = (squares / count[:, None, None] - mean**2).clamp(min=0).sqrt().clamp(min=1e-6)
        self.seasonal_mean.copy_(mean)
        self.seasonal_std.copy_(std)
        self.seasonal_ready.fill_(True)

    def on_fit_start(self) -> None:
        """Fit the normaliser, then the seasonal statistics unless a checkpoint had them."""
        super().on_fit_start()
        if not self.seasonal_period or bool(self.seasonal_ready):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                "seasonal_period needs the training data at fit start; pass a datamodule to "
                "trainer.fit, or call fit_seasonal_statistics(loader) before fitting."
            )
        self.fit_seasonal_statistics(datamodule.train_dataloader())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then project the mixing onto ``W >= 0`` (projected gradient descent)."""
        super().optimizer_step(*args, **kwargs)
        self.model.project_mixing()

    def on_validation_epoch_end(self) -> None:
        """Score the graph against the truth if known, then update the augmented Lagrangian."""
        self._log_graph_metrics("val")
        val_nll = self.val_nll.compute()
        self.val_nll.reset()
        if self.trainer.sanity_checking:
            return
        self.log("val_ortho_residual", self.orthogonality_residual_norm(), sync_dist=True)
        self.update_lagrangian(val_nll)

    def on_test_epoch_end(self) -> None:
        """Score the graph against the truth if the datamodule knows it."""
        self._log_graph_metrics("test")

    def _log_graph_metrics(self, stage: str) -> None:
        ground_truth = getattr(self.trainer.datamodule, "ground_truth", None)
        truth = ground_truth() if ground_truth is not None else None
        if truth is None:
            return
        true_graph, true_mixing = truth
        if tuple(true_mixing.shape) != tuple(self.model.mixing.shape):
            rank_zero_warn(
                f"ground-truth mixing {tuple(true_mixing.shape)} differs from the model's "
                f"{tuple(self.model.mixing.shape)}; set num_latents to the true number of "
                "latents to score the learned graph."
            )
            return
        perm = match_latents(self.model.mixing, true_mixing)
        aligned = permute_graph(self.learned_graph(), perm.to(self.device))
        metrics = getattr(self, f"{stage}_graph_metrics")
        metrics.update(aligned, true_graph.to(self.device))
        self.log_dict(metrics)

    @torch.no_grad()
    def update_lagrangian(self, val_nll: Tensor) -> None:
        """One augmented-Lagrangian step, given this epoch's (synchronised) validation NLL."""
        residual = self.orthogonality_residual_norm()
        self.alm_converged.fill_(bool(residual <= self.ortho_tolerance))
        if self.alm_converged:
            return
        self.alm_history.copy_(
            torch.cat([self.alm_history[1:], val_nll.reshape(1).to(self.alm_history)])
        )
        if torch.isnan(self.alm_history).any():
            return
        first, last = self.alm_history[0], self.alm_history[-1]
        if len(self.alm_history) > 1 and first - last > self.alm_rtol * first.abs():
            return  # the sub-problem is still improving
        self.alm_gamma += self.alm_mu * self.model.orthogonality_residual()
        if residual > self.ortho_omega * self.alm_last_residual:
            self.alm_mu *= self.ortho_mu_mult
        self.alm_last_residual.copy_(residual)
        self.alm_history.fill_(float("nan"))
        self.alm_updates += 1
