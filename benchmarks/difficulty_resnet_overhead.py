"""Overhead of DifficultyScores' cheap scores on a CIFAR-size ResNet-18 epoch (synthetic, 1 thread).

Trains timm's ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool) on synthetic 32x32
images for a few epochs, without the callback and with the cheap scores (loss, accuracy,
confidence, margin, EL2N) from each source, every epoch, runs alternating:

* ``source="eval"``: one eval forward pass over the training split at every scoring point
  (``cache_batches=True``);
* ``source="training"``: read from the training forward passes (no extra pass).

Prints the steady epoch time of each run and its ratio to the run without the callback (target
<= 1.10 for the training source), the same for the process's CPU time per epoch (less sensitive
to other processes on the machine than wall time), the callback's own time per epoch measured
inside its hooks, and the ratio that time implies, every epoch and every 4th.

Usage::

    cd benchmarks && OMP_NUM_THREADS=1 python difficulty_resnet_overhead.py --examples 256 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from difficulty_overhead import TimedScores
from epoch_timer import EpochTimer
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_climate.callbacks import IndexedDataset

SOURCES = ("eval", "training")


class CpuEpochTimer(Callback):
    """CPU time of this process (all its threads) in each epoch, after the first."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.times.append(time.process_time() - self._start)

    def steady_mean(self) -> float:
        """Mean over the epochs after the first."""
        return sum(self.times[1:]) / max(len(self.times) - 1, 1)


class ResNetTask(LightningModule):
    """ResNet-18 (CIFAR stem) trained with SGD on ``(x, y, id)`` batches."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model("resnet18", num_classes=10)
        self.model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.model.maxpool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def run(examples: int, epochs: int, source: str | None, root: str) -> tuple[float, float, float]:
    """Steady epoch wall and CPU time, and the callback's mean time per epoch (0 without it)."""
    torch.manual_seed(0)
    prototypes = torch.randn(10, 3, 32, 32)
    labels = torch.randint(0, 10, (examples,))
    images = prototypes[labels] + 2.0 * torch.randn(examples, 3, 32, 32)
    data = IndexedDataset(TensorDataset(images, labels))
    loader = DataLoader(data, batch_size=64, shuffle=True)
    timer, cpu = EpochTimer(), CpuEpochTimer()
    callbacks: list[Callback] = []
    scorer = None
    if source is not None:
        extra = {"batch_size": 256, "cache_batches": True} if source == "eval" else {}
        scorer = TimedScores(
            input_key=0, target_key=1, index_key=2, source=source,
            path=f"{root}/scores_{time.monotonic_ns()}.zarr", **extra,
        )  # fmt: skip
        callbacks.append(scorer)
    callbacks += [timer, cpu]
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(ResNetTask(), loader)
    own = scorer.seconds[1:] if scorer is not None else [0.0]
    return timer.steady_mean(), cpu.steady_mean(), sum(own) / len(own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes: tuple[str | None, ...] = (None, *SOURCES)
    best = dict.fromkeys(modes, float("inf"))
    best_cpu = dict.fromkeys(modes, float("inf"))
    own = dict.fromkeys(SOURCES, float("inf"))
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for mode in modes:
                epoch, cpu, seconds = run(args.examples, args.epochs, mode, root)
                best[mode] = min(best[mode], epoch)
                best_cpu[mode] = min(best_cpu[mode], cpu)
                if mode is not None:
                    own[mode] = min(own[mode], seconds)
    base, base_cpu = best[None], best_cpu[None]
    print(
        f"{args.examples} examples, epoch without the callback: {base:.2f} s wall, "
        f"{base_cpu:.2f} s CPU"
    )
    print("| source | epoch (s) | ratio | epoch CPU (s) | CPU ratio | callback's time per epoch (s) "
          "| ratio from that time, every epoch | every 4th epoch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for source in SOURCES:
        print(
            f"| {source} | {best[source]:.2f} | {best[source] / base:.3f} "
            f"| {best_cpu[source]:.2f} | {best_cpu[source] / base_cpu:.3f} | {own[source]:.3f} "
            f"| **{(base + own[source]) / base:.3f}** | {(base + own[source] / 4) / base:.3f} |"
        )


if __name__ == "__main__":
    main()
