"""Module-level models and data for the SAM callback tests (picklable for ddp_spawn)."""

# No `from __future__ import annotations`: DDP checks the comm hook's annotations as objects.
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, Dataset

from lightning_climate.optim import SAM, in_perturbed_pass

#: one entry per DDP gradient all-reduce in this process: whether it ran in SAM's perturbed pass.
ALLREDUCES: list[bool] = []


def counting_allreduce(
    state: Any, bucket: torch.distributed.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: DDP's own all-reduce, recorded in :data:`ALLREDUCES`."""
    ALLREDUCES.append(in_perturbed_pass())
    return allreduce_hook(state, bucket)


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
    """MLP with a LayerNorm (or a BatchNorm); SGD with momentum in its own configure_optimizers.

    ``sam`` wraps the SGD in SAM, bound explicitly (``bind=True``) or left to find the module
    itself. ``overflow_at=(batch_idx, perturbed pass)`` makes that pass's loss infinite.
    """

    def __init__(
        self,
        batch_size: int = 16,
        batchnorm: bool = False,
        sam: dict[str, Any] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        n_samples: int = 64,
        bind: bool = True,
        overflow_at: tuple[int, bool] | None = None,
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
        self.bind = bind
        self.overflow_at = overflow_at
        self.records: list[tuple[float, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.lin(x)).tanh())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = nn.functional.mse_loss(self(batch["x"]), batch["y"])
        if self.overflow_at == (batch_idx, in_perturbed_pass()):
            loss = loss * float("inf")
        self.records.append((loss.item(), in_perturbed_pass()))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        sgd = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        if self.sam is None:
            return sgd
        sam = SAM.wrap(sgd, **self.sam)
        return sam.bind(self) if self.bind else sam

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RegressionSet(self.n_samples), batch_size=self.batch_size, shuffle=False)


class RegressionData(LightningDataModule):
    """The data of SmallNet's own loader, as a datamodule (LightningCLI needs a ``data:``)."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RegressionSet(), batch_size=self.batch_size, shuffle=False)


class InjectedNet(SmallNet):
    """SmallNet whose optimizer is an injected ``OptimizerCallable`` (built, never bound, here)."""

    def __init__(self, optimizer: OptimizerCallable = torch.optim.SGD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.optimizer = optimizer

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())


class SaveParams(Callback):
    """Writes each rank's state dict, logged ``train_loss``, the module's loss records and the
    DDP all-reduces (counted by :func:`counting_allreduce`) at the end of training to
    ``<dir>/rank<r>.pt``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning registers DDP communication hooks on CUDA only
        if isinstance(trainer.strategy.model, nn.parallel.DistributedDataParallel):
            trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        logged = trainer.logged_metrics.get("train_loss")
        run = {
            "state": state,
            "logged_loss": None if logged is None else float(logged),
            "records": getattr(pl_module, "records", []),
            "allreduces": list(ALLREDUCES),
        }
        torch.save(run, self.directory / f"rank{trainer.global_rank}.pt")


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
            self.records.append((loss.item(), in_perturbed_pass()))
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss)


def reference_params(
    steps: int,
    batch_size: int = 16,
    batchnorm: bool = False,
    skip: tuple[int, ...] = (),
    **sam: Any,
) -> dict[str, Tensor]:
    """The same training written as a plain PyTorch loop around the bound SAM optimizer.

    Batches whose index is in ``skip`` are drawn but not trained on. Returns the state dict.
    """
    model = SmallNet(batch_size=batch_size, batchnorm=batchnorm)
    opt = SAM.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **sam).bind(model)
    for index, batch in zip(range(steps), model.train_dataloader(), strict=False):
        if index in skip:
            continue

        def closure(batch: dict[str, Tensor] = batch) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
            loss.backward()
            return loss

        opt.step(closure)
    return model.state_dict()
