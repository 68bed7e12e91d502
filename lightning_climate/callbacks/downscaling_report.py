"""End-of-training report of a downscaling model against interpolation, with a figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torchmetrics import MeanSquaredError

from lightning_climate.metrics.relative_l2 import RelativeL2Error
from lightning_climate.models.interpolation import Interpolation, InterpolationMode

__all__ = ["DownscalingReport"]


class DownscalingReport(Callback):
    """After ``fit``, evaluate every test set of the datamodule and compare with interpolation.

    For each named test set (e.g. ``x1``, ``x2``, ``x4`` of
    :class:`~lightning_climate.datamodules.NavierStokesDataModule`) it computes the MSE and the
    relative L2 error of the model and of a parameter-free interpolation baseline, prints a table,
    and writes a PNG with one row per test set: low-resolution input, truth, prediction, error.

    The LightningModule must be callable as ``pl_module(lr, factor)`` in physical units (as
    :class:`~lightning_climate.tasks.DownscalingTask` is) and the batches must be dicts with
    ``lr`` and ``hr``. The evaluation runs on global rank 0 only and uses no collective calls, so
    it is safe under DDP. Results are kept in :attr:`results` (``{set: {metric: value}}``).

    Args:
        baseline: interpolation mode of the baseline column.
        output_dir: folder of the figure; defaults to the trainer's ``log_dir`` (or ``default_root_dir``).
        filename: name of the PNG file.
        max_batches: evaluate at most this many batches per test set (``None``: all).
    """

    def __init__(
        self,
        baseline: InterpolationMode = "bicubic",
        output_dir: str | os.PathLike[str] | None = None,
        filename: str = "downscaling_report.png",
        max_batches: int | None = None,
    ) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be a positive integer or None, got {max_batches}.")
        self.baseline = Interpolation(baseline)
        self.output_dir = output_dir
        self.filename = filename
        self.max_batches = max_batches
        self.results: dict[str, dict[str, float]] = {}
        self.figure_path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluate, print the table and write the figure (rank 0)."""
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it.
        directory = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        try:
            loaders = datamodule.test_dataloader() if datamodule is not None else None
        except MisconfigurationException:
            loaders = None
        if loaders is None:
            rank_zero_warn(
                "DownscalingReport: the datamodule has no test split; no report written."
            )
            return
        loaders = loaders if isinstance(loaders, list) else [loaders]
        names = (
            datamodule.dataloader_names("test")
            if hasattr(datamodule, "dataloader_names")
            else [f"dl{i}" for i in range(len(loaders))]
        )
        was_training = pl_module.training
        pl_module.eval()
        examples = {}
        with torch.no_grad():
            for name, loader in zip(names, loaders, strict=True):
                self.results[name], examples[name] = self._evaluate(pl_module, loader)
        pl_module.train(was_training)
        print(self.format_table())
        self.figure_path = directory / self.filename
        self._plot(examples, self.figure_path)
        print(f"DownscalingReport: figure written to {self.figure_path}")

    def _evaluate(
        self, pl_module: LightningModule, loader: Any
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        metrics = {
            # rank 0 evaluates alone: a synchronising compute() would wait for the other ranks forever
            key: metric(sync_on_compute=False).to(pl_module.device)
            for key, metric in (
                ("MSE", MeanSquaredError),
                ("RelL2", RelativeL2Error),
                ("base_MSE", MeanSquaredError),
                ("base_RelL2", RelativeL2Error),
            )
        }
        example: dict[str, Tensor] = {}
        for i, batch in enumerate(loader):
            if self.max_batches is not None and i >= self.max_batches:
                break
            lr = batch["lr"].to(pl_module.device)
            hr = batch["hr"].to(pl_module.device)
            factor = hr.shape[-1] / lr.shape[-1]
            factor = int(factor) if factor.is_integer() else factor
            pred = pl_module(lr, factor)
            base = self.baseline(lr, factor)
            metrics["MSE"].update(pred, hr)
            metrics["RelL2"].update(pred, hr)
            metrics["base_MSE"].update(base, hr)
            metrics["base_RelL2"].update(base, hr)
            if not example:
                example = {"lr": lr[0, 0], "hr": hr[0, 0], "pred": pred[0, 0]}
        return {k: m.compute().item() for k, m in metrics.items()}, example

    def format_table(self) -> str:
        """The results as a fixed-width text table."""
        base = self.baseline.mode
        header = (
            f"{'test set':<10}{'MSE':>12}{'rel. L2':>12}{base + ' MSE':>16}{base + ' rel. L2':>18}"
        )
        lines = [header, "-" * len(header)]
        for name, r in self.results.items():
            lines.append(
                f"{name:<10}{r['MSE']:>12.3e}{r['RelL2']:>12.4f}{r['base_MSE']:>16.3e}{r['base_RelL2']:>18.4f}"
            )
        return "\n".join(lines)

    def _plot(self, examples: dict[str, dict[str, Tensor]], path: Path) -> None:
        import matplotlib

        matplotlib.use("agg")
        import matplotlib.pyplot as plt

        from lightning_climate.utils import atomic_path

        rows = [name for name, ex in examples.items() if ex]
        fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
        for row, name in zip(axes, rows, strict=True):
            ex = {k: v.float().cpu() for k, v in examples[name].items()}
            lo, hi = ex["hr"].min().item(), ex["hr"].max().item()
            err = ex["pred"] - ex["hr"]
            emax = err.abs().max().item() or 1.0
            panels = [
                (ex["lr"], f"{name}: input {tuple(ex['lr'].shape)}", "RdBu_r", lo, hi),
                (ex["hr"], f"truth {tuple(ex['hr'].shape)}", "RdBu_r", lo, hi),
                (ex["pred"], "prediction", "RdBu_r", lo, hi),
                (err, "prediction - truth", "PuOr", -emax, emax),
            ]
            for ax, (img, title, cmap, vmin, vmax) in zip(row, panels, strict=True):
                im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
                ax.set_title(title, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
