"""Module-level data, models and readers for the DifficultyScores tests (picklable for ddp_spawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import xarray as xr
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.callbacks import DifficultyScores
from lightning_climate.callbacks.difficulty import DIFFICULTY_SCORES

ALL_SCORES = list(DIFFICULTY_SCORES)


class DigitsSubset(Dataset[Any]):
    """The first ``n`` sklearn digits as ``{"image": (1, 8, 8), "label", "index"}`` or ``(x, y)``."""

    def __init__(self, n: int, tuples: bool = False) -> None:
        digits = load_digits()
        self.images = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
        self.labels = torch.tensor(digits.target[:n], dtype=torch.long)
        self.tuples = tuples

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Any:
        if self.tuples:
            return self.images[i], self.labels[i]
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


class TinyDigits(LightningDataModule):
    """``n`` digits for training (shuffled unless ``shuffle=False``), optionally a validation split."""

    def __init__(
        self,
        n: int = 101,
        batch_size: int = 16,
        shuffle: bool = True,
        tuples: bool = False,
        val: bool = False,
    ) -> None:
        super().__init__()
        self.n, self.batch_size, self.shuffle, self.tuples = n, batch_size, shuffle, tuples
        if val:  # a validation loop makes ModelCheckpoint save at validation end
            self.val_dataloader = self._val_dataloader  # type: ignore[method-assign]

    def train_dataloader(self) -> DataLoader[Any]:
        data = DigitsSubset(self.n, self.tuples)
        return DataLoader(data, batch_size=self.batch_size, shuffle=self.shuffle)

    def _val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(DigitsSubset(32, self.tuples), batch_size=16)


class TinyClassifier(LightningModule):
    """A 64-16-10 MLP on dict or tuple batches; raises in ``crash_at_epoch``."""

    def __init__(self, lr: float = 0.5, hidden: int = 16, crash_at_epoch: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @staticmethod
    def _xy(batch: Any) -> tuple[Tensor, Tensor]:
        return (batch["image"], batch["label"]) if isinstance(batch, dict) else (batch[0], batch[1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.current_epoch == self.hparams["crash_at_epoch"]:
            raise RuntimeError("simulated crash")
        x, y = self._xy(batch)
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class ValidatedClassifier(TinyClassifier):
    """TinyClassifier with a validation step (ModelCheckpoint then saves at validation end)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self._xy(batch)
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def logits_from_net(module: nn.Module, x: Tensor) -> Tensor:
    """A user-supplied forward (module level, so it pickles)."""
    return module.net(x)


def read(path: str | Path) -> xr.Dataset:
    """The whole score store, loaded."""
    with xr.open_zarr(path) as ds:
        return ds.load()


def fit(
    trainer_kwargs: dict[str, Any],
    callback: DifficultyScores,
    epochs: int = 2,
    data: LightningDataModule | None = None,
    **model_kw: Any,
) -> TinyClassifier:
    """Train a seeded TinyClassifier with ``callback``; returns the model."""
    torch.manual_seed(0)
    model = TinyClassifier(**model_kw)
    trainer = Trainer(max_epochs=epochs, callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, data or TinyDigits())
    return model
