"""Image classification with a timm backbone, the task SAM / ASAM / SAM-ON are demonstrated on."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_climate.layers.normalization import Normalizer
from lightning_climate.models.timm_model import TimmModel
from lightning_climate.optim.sam import in_perturbed_pass
from lightning_climate.tasks.base import BaseTask

__all__ = ["ClassificationTask"]


class ClassificationTask(BaseTask):
    """Multiclass image classification.

    Batches are dicts with ``image`` ``(B, C, H, W)``, ``label`` ``(B,)`` and ``index`` ``(B,)``.
    Images are standardised per channel with the datamodule's ``image_mean``/``image_std``
    training statistics. Logs ``{train,val,test}_loss`` and ``{train,val,test}_Accuracy``. Under
    SAM the training loss and metrics are taken from the first (unperturbed) pass only.

    Args:
        model: a module mapping images to logits, e.g. ``{class_path: TimmModel, init_args:
            {name: resnet18, num_classes: 10, in_channels: 1}}`` or
            :class:`~lightning_climate.models.WideResNet`. A timm model name still works for this
            version (deprecated).
        num_classes: number of classes.
        in_channels: image channels.
        loss: ``"ce"`` (cross-entropy, with optional ``label_smoothing``).
        optimizer: injected optimizer, e.g. ``torch.optim.SGD`` or ``lightning_climate.optim.SAM``;
            ``None``: AdamW with its defaults.
        lr_scheduler: optional injected scheduler.
        label_smoothing: cross-entropy label smoothing (the SAM-ON paper uses 0.1).
        model_kwargs: deprecated, with a timm model name only: extra ``timm.create_model`` arguments.
    """

    def __init__(
        self,
        model: nn.Module | str,
        num_classes: int = 10,
        in_channels: int = 1,
        loss: Literal["ce"] = "ce",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if loss != "ce":
            raise ValueError(f"loss must be one of ['ce'], got {loss!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        name = model if isinstance(model, str) else None
        if isinstance(model, str):
            warnings.warn(
                f"ClassificationTask(model={model!r}) is deprecated; pass a module, in YAML "
                f"`model: {{class_path: TimmModel, init_args: {{name: {model}, num_classes: "
                f"{num_classes}, in_channels: {in_channels}}}}}`.",
                DeprecationWarning,
                stacklevel=2,
            )
            model = TimmModel(model, num_classes, in_channels, model_kwargs)
        elif model_kwargs:
            raise ValueError(
                "model_kwargs applies to a timm model name only; give those arguments to the "
                "module itself, e.g. TimmModel(name, num_classes, in_channels, model_kwargs={...})."
            )
        super().__init__(model, optimizer=optimizer, lr_scheduler=lr_scheduler)
        if name is not None:  # kept in hparams, so load_from_checkpoint(path) rebuilds the network
            self.hparams["model"] = name

    def configure_losses(self) -> None:
        """Cross-entropy with label smoothing."""
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams["label_smoothing"])

    def configure_normalizers(self) -> dict[str, Normalizer]:
        """Per-channel standardisation of ``image``."""
        return {"image": Normalizer("image", "zscore")}

    def configure_metrics(self) -> MetricCollection:
        """Micro-averaged accuracy."""
        num_classes = self.hparams["num_classes"]
        return MetricCollection({"Accuracy": MulticlassAccuracy(num_classes, average="micro")})

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)`` in the units of the data."""
        return self.model(self.normalizers["image"](image))

    def shared_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int = 0) -> Tensor:
        """Cross-entropy; logs ``{stage}_loss`` and ``{stage}_Accuracy`` (first SAM pass only)."""
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        if stage == "train" and in_perturbed_pass():
            return loss
        metrics = self.stage_metrics(stage, dataloader_idx)
        batch_size = len(batch["label"])
        metrics(logits.detach(), batch["label"])  # forward: per-step value and accumulation
        self.log_loss(stage, loss, batch_size, dataloader_idx)
        self.log_metrics(metrics, batch_size)
        return loss

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Class probabilities with the sample indices they belong to."""
        return {"probs": self(batch["image"]).softmax(dim=-1), "index": batch["index"]}
