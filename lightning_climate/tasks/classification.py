"""Image classification with a timm backbone, the task SAM / ASAM / SAM-ON are demonstrated on."""

from __future__ import annotations

from typing import Any, Literal

import timm
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_climate.optim.sam import in_perturbed_pass
from lightning_climate.tasks.base import BaseTask

__all__ = ["ClassificationTask"]


class ClassificationTask(BaseTask):
    """Multiclass image classification.

    Batches are dicts with ``image`` ``(B, C, H, W)``, ``label`` ``(B,)`` and ``index`` ``(B,)``.
    Logs ``{train,val,test}_loss`` and ``{train,val,test}_Accuracy``. Under SAM the training loss
    and metrics are taken from the first (unperturbed) pass only.

    Args:
        model: a timm model name, built with ``timm.create_model(model, pretrained=False,
            num_classes=num_classes, in_chans=in_channels, **model_kwargs)`` (no download), or a
            ready ``nn.Module`` mapping images to logits.
        num_classes: number of classes.
        in_channels: image channels.
        loss: ``"ce"`` (cross-entropy, with optional ``label_smoothing``).
        optimizer: injected optimizer, e.g. ``torch.optim.SGD`` or ``lightning_climate.optim.SAM``.
        lr_scheduler: optional injected scheduler.
        model_kwargs: extra keyword arguments of ``timm.create_model`` (e.g. ``img_size`` and
            ``patch_size`` of a ViT); ignored when ``model`` is a module.
        label_smoothing: cross-entropy label smoothing (the SAM-ON paper uses 0.1).
    """

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self,
        model: str | nn.Module = "resnet18",
        num_classes: int = 10,
        in_channels: int = 1,
        loss: Literal["ce"] = "ce",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        model_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if loss != "ce":
            raise ValueError(f"loss must be one of ['ce'], got {loss!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        ignore = ["optimizer", "lr_scheduler"] + (["model"] if isinstance(model, nn.Module) else [])
        self.save_hyperparameters(ignore=ignore)
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self.model = timm.create_model(
                model,
                pretrained=False,
                num_classes=num_classes,
                in_chans=in_channels,
                **(model_kwargs or {}),
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection({"Accuracy": MulticlassAccuracy(num_classes, average="micro")})
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.model(image)

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        if stage == "train" and in_perturbed_pass():
            return loss
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        batch_size = len(batch["label"])
        metrics(logits.detach(), batch["label"])  # forward: per-step value and accumulation
        self.log(f"{stage}_loss", loss.detach(), batch_size=batch_size, prog_bar=stage != "test")
        self.log_dict(metrics, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of the batch; logs ``train_loss`` and ``train_Accuracy``."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Logs ``val_loss`` and ``val_Accuracy``."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Logs ``test_loss`` and ``test_Accuracy``."""
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities with the sample indices they belong to."""
        return {"probs": self(batch["image"]).softmax(dim=-1), "index": batch["index"]}
