"""Test accuracy of SGD, SAM and SAM-ON on the real digits, several seeds (short CPU runs).

Each run: a small BatchNorm CNN, SGD (lr 0.05, momentum 0.9, weight decay 5e-4), label smoothing
0.1, the stratified digits split of that seed, then ``trainer.test``. SAM and SAM-ON are added
with the :class:`~lightning_climate.callbacks.SharpnessAwareMinimization` callback, so the three
runs of a seed differ only in it.

    python benchmarks/sam_digits_evidence.py --epochs 15 --seeds 0 1 2

``--every-n-steps 2`` adds SAM and SAM-ON with a SAM step every second step;
``--methods`` picks a subset of the rows (e.g. only the new ones).
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.datamodules import DigitsDataModule
from lightning_climate.tasks import ClassificationTask


def small_cnn() -> nn.Module:
    """Two conv-BN-ReLU blocks and a linear head for 8x8 single-channel images."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def sgd(params: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)  # type: ignore[arg-type]


def run(seed: int, epochs: int, callback: SharpnessAwareMinimization | None) -> tuple[float, float]:
    seed_everything(seed, verbose=False)
    task = ClassificationTask(small_cnn(), num_classes=10, optimizer=sgd, label_smoothing=0.1)
    dm = DigitsDataModule(batch_size=64, seed=seed)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[] if callback is None else [callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(task, dm)
    (result,) = trainer.test(task, dm, verbose=False)
    return 100.0 * result["test_Accuracy"], result["test_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rho-sam", type=float, default=0.05)
    parser.add_argument("--rho-samon", type=float, default=0.5)
    parser.add_argument("--every-n-steps", type=int, nargs="*", default=[])
    parser.add_argument("--methods", nargs="*", help="names of the rows to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = {
        "SGD": lambda: None,
        "SAM": lambda: SharpnessAwareMinimization(rho=args.rho_sam),
        "SAM-ON": lambda: SharpnessAwareMinimization(rho=args.rho_samon, norm_only=True),
    }
    for n in args.every_n_steps:
        methods[f"SAM every {n}"] = functools.partial(
            SharpnessAwareMinimization, rho=args.rho_sam, every_n_steps=n
        )
        methods[f"SAM-ON every {n}"] = functools.partial(
            SharpnessAwareMinimization, rho=args.rho_samon, norm_only=True, every_n_steps=n
        )
    if args.methods:
        methods = {name: make for name, make in methods.items() if name in args.methods}
    print(f"rho: SAM {args.rho_sam}, SAM-ON {args.rho_samon}")
    rows = []
    for name, make in methods.items():
        results = [run(seed, args.epochs, make()) for seed in args.seeds]
        accs = [acc for acc, _ in results]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells = " | ".join(f"{a:.2f} ({loss:.4f})" for a, loss in results)
        rows.append(f"| {name} | {cells} | {statistics.mean(accs):.2f} ± {spread:.2f} |")
        print(rows[-1], flush=True)
    header = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"\nDigits test accuracy % (test loss), {args.epochs} epochs, small BN CNN\n")
    print(f"| method | {header} | mean ± std |")
    print("|---" * (len(args.seeds) + 2) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
