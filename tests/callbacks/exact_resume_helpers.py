"""A user's own module and loaders for the exact-resume tests (importable by ddp_spawn workers)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.callbacks import ExactResume
from lightning_climate.datamodules import ResumableDataLoader, ResumableSampler

#: samples in the training set; with batch 8 that is 6 batches per epoch
NUM_SAMPLES = 48
BATCH_SIZE = 8


class AugmentedDataset(Dataset[tuple[Tensor, Tensor]]):
    """Regression pairs whose inputs are jittered with torch, numpy and python random numbers."""

    def __init__(self, num_samples: int = NUM_SAMPLES, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(num_samples, 8, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(num_samples, 1, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.x[index]
        if self.augment:
            scale = 1.0 + 0.1 * random.random()
            x = scale * x + 0.05 * torch.randn(8) + torch.from_numpy(np.random.normal(0, 0.05, 8))
        return x.float(), self.y[index]


class DropoutRegressor(LightningModule):
    """A small MLP with dropout trained with Adam; each rank may get its own random stream.

    Args:
        rank_streams: reseed torch in ``setup`` with ``100 + global_rank``, so ranks draw different
            dropout masks (a resumed rank must get its own states back, not rank 0's).
    """

    def __init__(self, rank_streams: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        self.rank_streams = rank_streams

    def setup(self, stage: str) -> None:
        if self.rank_streams:
            torch.manual_seed(100 + self.global_rank)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def make_loader(kind: str, num_workers: int = 0) -> DataLoader[Any]:
    """The training loader: ``"plain"`` (``shuffle=True``), ``"persistent"`` (plain with
    persistent workers) or ``"resumable"``."""
    dataset = AugmentedDataset()
    if kind in ("plain", "persistent"):
        return DataLoader(
            dataset,
            batch_size=BATCH_SIZE,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=kind == "persistent",
        )
    sampler = ResumableSampler(dataset)  # built inside fit: ranks come from torch.distributed
    return ResumableDataLoader(
        dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=num_workers
    )


class LoaderModule(DropoutRegressor):
    """:class:`DropoutRegressor` that builds its own loaders (so they are made inside each rank)."""

    def __init__(
        self,
        kind: str = "plain",
        num_workers: int = 0,
        rank_streams: bool = False,
        draw_at_epoch_end: bool = False,
    ) -> None:
        super().__init__(rank_streams=rank_streams)
        self.kind = kind
        self.num_workers = num_workers
        self.draw_at_epoch_end = draw_at_epoch_end

    def on_train_epoch_end(self) -> None:
        if self.draw_at_epoch_end:
            torch.rand(1)

    def train_dataloader(self) -> DataLoader[Any]:
        return make_loader(self.kind, self.num_workers)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(AugmentedDataset(16, augment=False), batch_size=BATCH_SIZE)


def fit(
    root: Path,
    max_epochs: int,
    ckpt_path: Path | None = None,
    *,
    kind: str = "plain",
    num_workers: int = 0,
    exact: bool = True,
    devices: int = 1,
    every_n_train_steps: int | None = None,
    rank_streams: bool = False,
    validate: bool = True,
    draw_at_epoch_end: bool = False,
    save_on_train_epoch_end: bool | None = None,
) -> Path:
    """Seed, build, train (from ``ckpt_path`` if given) and return the newest checkpoint's path.

    Checkpoints are written after validation, or at the train epoch end when ``validate`` is
    false, or every ``every_n_train_steps`` steps.
    """
    seed_everything(0, verbose=False)
    module = LoaderModule(kind, num_workers, rank_streams, draw_at_epoch_end)
    saver = ModelCheckpoint(
        dirpath=root,
        filename="{epoch}-{step}",
        save_top_k=-1,
        every_n_train_steps=every_n_train_steps,
        save_on_train_epoch_end=save_on_train_epoch_end,
    )
    callbacks: list[Callback] = [saver] + ([ExactResume()] if exact else [])
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_val_batches=1.0 if validate else 0,
        deterministic=True,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return newest_checkpoint(root)


def newest_checkpoint(root: Path) -> Path:
    """The checkpoint of ``root`` with the most steps."""
    paths = sorted(root.glob("*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    return paths[-1]


def assert_same_training_state(a: Path, b: Path) -> None:
    """Weights and optimizer states of two checkpoints are equal bit for bit."""
    first = torch.load(a, weights_only=True)
    second = torch.load(b, weights_only=True)
    assert first["global_step"] == second["global_step"]
    assert_equal_nested(first["state_dict"], second["state_dict"])
    assert_equal_nested(first["optimizer_states"], second["optimizer_states"])


def assert_equal_nested(a: Any, b: Any, where: str = "") -> None:
    """Tensors equal bit for bit (``torch.equal``), everything else ``==``, at every nesting level."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_nested(x, y, f"{where}/{i}")
    elif isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b), f"tensors differ at {where}"
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"
