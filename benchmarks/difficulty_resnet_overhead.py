"""Overhead of DifficultyScores' cheap scores on a CIFAR-size ResNet-18 epoch (synthetic, 1 thread).

Trains timm's ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool) on synthetic 32x32
images for a few epochs, without the callback and with the cheap scores (loss, accuracy,
confidence, margin, EL2N: one eval forward pass over the training split at every scoring point,
``cache_batches=True``), alternating runs. Prints the steady epoch time of each, the ratio
(target <= 1.10), the time of one scoring point measured inside the hook, and the ratio it implies
when scoring every epoch and every 4th epoch.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/difficulty_resnet_overhead.py --examples 256 --epochs 3
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


class ResNetTask(LightningModule):
    """ResNet-18 (CIFAR stem) trained with SGD on ``(x, y)`` batches."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model("resnet18", num_classes=10)
        self.model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.model.maxpool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def run(examples: int, epochs: int, with_scores: bool, root: str) -> tuple[float, float]:
    """Steady epoch time, and the mean time of a scoring point (0 without the callback)."""
    torch.manual_seed(0)
    prototypes = torch.randn(10, 3, 32, 32)
    labels = torch.randint(0, 10, (examples,))
    images = prototypes[labels] + 2.0 * torch.randn(examples, 3, 32, 32)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True)
    timer = EpochTimer()
    callbacks: list[Callback] = []
    scorer = None
    if with_scores:
        scorer = TimedScores(
            input_key=0, target_key=1, index_key=None, batch_size=256, cache_batches=True,
            path=f"{root}/scores_{time.monotonic_ns()}.zarr",
        )  # fmt: skip
        callbacks.append(scorer)
    callbacks.append(timer)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(ResNetTask(), loader)
    scoring = scorer.seconds[1:] if scorer is not None else [0.0]
    return timer.steady_mean(), sum(scoring) / len(scoring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    best = {False: float("inf"), True: float("inf")}
    scoring = float("inf")
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for with_scores in (False, True):
                epoch, score = run(args.examples, args.epochs, with_scores, root)
                best[with_scores] = min(best[with_scores], epoch)
                if with_scores:
                    scoring = min(scoring, score)
    base = best[False]
    print("| examples | epoch without (s) | with cheap scores (s) | ratio | scoring point (s) | "
          "ratio from the scoring time, every epoch | every 4th epoch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.examples} | {base:.2f} | {best[True]:.2f} | **{best[True] / base:.3f}** | {scoring:.2f} "
        f"| {(base + scoring) / base:.3f} | {(base + scoring / 4) / base:.3f} |"
    )


if __name__ == "__main__":
    main()
