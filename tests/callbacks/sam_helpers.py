"""Module-level models and data for the SAM callback tests (picklable for ddp_spawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.optim import SAM, in_perturbed_pass


class RegressionSet(Dataset[dict[str, Tensor]]):
    """64 fixed samples of a smooth regression problem."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, :1] * 2).sin() + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


class SmallNet(LightningModule):
    """MLP with a LayerNorm (or a BatchNorm); SGD with momentum in its own configure_optimizers."""

    def __init__(
        self,
        batch_size: int = 16,
        batchnorm: bool = False,
        sam: dict[str, Any] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        n_samples: int = 64,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8) if batchnorm else nn.LayerNorm(8)
        self.head = nn.Linear(8, 1)
        self.batch_size = batch_size
        self.sam = sam
        self.lr = lr
        self.momentum = momentum
        self.n_samples = n_samples
        self.records: list[tuple[float, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.lin(x)).tanh())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = nn.functional.mse_loss(self(batch["x"]), batch["y"])
        self.records.append((loss.item(), in_perturbed_pass()))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        sgd = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        if self.sam is None:
            return sgd
        return SAM.wrap(sgd, **self.sam).bind(self)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RegressionSet(self.n_samples), batch_size=self.batch_size, shuffle=False)


class SaveParams(Callback):
    """Writes each rank's parameters at the end of training to ``<dir>/rank<r>.pt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


class ManualSAMNet(SmallNet):
    """Manual optimization with the SAM optimizer (the recipe the callback's error points to)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()

        def closure() -> Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(self(batch["x"]), batch["y"])
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss)
