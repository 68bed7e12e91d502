"""Cost of the difficulty scores.

1. Epoch time of ClassificationTask on the real digits with DifficultyScores' cheap scores (loss,
   accuracy, confidence, margin, EL2N from one eval forward pass over the training split, every
   epoch) divided by the epoch time without the callback (target <= 1.15).
2. GraNd over a batch: ``torch.func`` (vmap of grad) against a loop of per-example backward passes.

Each run's epoch time is the mean over its epochs after the first; runs alternate (without, with,
without, ...) and the minimum over repeats is kept, which makes the
ratio robust to other load on the machine. Epochs of these toy models last 60-120 ms, and run-to-run
differences of a few ms remain, so the time of the scoring points themselves (measured around the
hook) is printed too, with the ratio it implies. Usage::

    OMP_NUM_THREADS=1 python benchmarks/difficulty_overhead.py --epochs 10 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from epoch_timer import EpochTimer
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_climate.analysis.scores import grand, grand_loop
from lightning_climate.callbacks import DifficultyScores
from lightning_climate.datamodules import DigitsDataModule
from lightning_climate.models import ReLUCNN, ReLUMLP
from lightning_climate.tasks import ClassificationTask


class TimedScores(DifficultyScores):
    """DifficultyScores that records its own wall time in each epoch (``seconds``, one per epoch).

    The time spent in its per-step hooks (``source="training"`` scores each step there) and in its
    epoch-end hook (the scoring point: the eval pass, or the gather and hand-off to the writer).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_epoch_start(trainer, pl_module)
        self.seconds.append(time.perf_counter() - start)

    def on_train_batch_start(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_start(*args)
        self.seconds[-1] += time.perf_counter() - start

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.seconds[-1] += time.perf_counter() - start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.seconds[-1] += time.perf_counter() - start


def epoch_time(arch: str, scores: str, epochs: int, root: str) -> tuple[float, float]:
    """Mean epoch time after the first epoch, and the mean time of the scoring points in it."""
    seed_everything(0)
    model = ReLUMLP(64, [32, 32]) if arch == "mlp" else ReLUCNN(1, [8, 16], 8)
    task = ClassificationTask(model=model, num_classes=10, in_channels=1)
    timer = EpochTimer()
    callbacks: list[Callback] = []
    scorer = None
    if scores != "none":
        scorer = TimedScores(
            path=f"{root}/{arch}_{time.monotonic_ns()}_scores.zarr",
            batch_size=512,
            cache_batches=scores == "cached",
        )
        callbacks.append(scorer)
    callbacks.append(timer)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(task, DigitsDataModule(batch_size=64))
    scoring = scorer.seconds[1:] if scorer is not None else [0.0]
    return timer.steady_mean(), sum(scoring) / len(scoring)


def grand_ratio(arch: str, batch: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = (ReLUMLP(64, [32, 32]) if arch == "mlp" else ReLUCNN(1, [8, 16], 8)).eval()
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    fast, slow = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a = grand(model, x, y)
        fast = min(fast, time.perf_counter() - start)
        start = time.perf_counter()
        b = grand_loop(model, x, y)
        slow = min(slow, time.perf_counter() - start)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return fast, slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grand-batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| model | epoch without (s) | with cheap scores (s) | ratio "
        "| with cheap scores, cache_batches (s) | ratio | scoring point, cached (ms) "
        "| ratio from the scoring time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for arch in ("mlp", "cnn"):
            best = {"none": float("inf"), "default": float("inf"), "cached": float("inf")}
            scoring = float("inf")
            for _ in range(args.repeats):
                for mode in ("none", "default", "cached"):
                    epoch, score = epoch_time(arch, mode, args.epochs, root)
                    best[mode] = min(best[mode], epoch)
                    if mode == "cached":
                        scoring = min(scoring, score)
            base = best["none"]
            print(
                f"| {arch} | {base:.3f} | {best['default']:.3f} | {best['default'] / base:.3f} "
                f"| {best['cached']:.3f} | {best['cached'] / base:.3f} | {1e3 * scoring:.1f} "
                f"| {(base + scoring) / base:.3f} |"
            )
    print()
    print(
        f"| model | GraNd torch.func, {args.grand_batch} ex. (s) | per-example loop (s) | speed-up |"
    )
    print("|---|---|---|---|")
    for arch in ("mlp", "cnn"):
        fast, slow = grand_ratio(arch, args.grand_batch, args.repeats)
        print(f"| {arch} | {fast:.4f} | {slow:.4f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    main()
