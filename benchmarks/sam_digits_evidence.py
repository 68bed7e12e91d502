"""Test accuracy of SGD, SAM and SAM-ON on the real digits, several seeds (short CPU runs).

Each run: a small BatchNorm CNN, SGD (lr 0.05, momentum 0.9, weight decay 5e-4), label smoothing
0.1, the stratified digits split of that seed, a global batch of 64, then ``trainer.test`` in one
process in fp32. SAM and SAM-ON are added with the
:class:`~lightning_climate.callbacks.SharpnessAwareMinimization` callback, so the runs of a seed
differ only in it (and in the precision or process count named by the row).

    python benchmarks/sam_digits_evidence.py --epochs 15 --seeds 0 1 2 --every-n-steps 2 --ddp --fp16

``--every-n-steps 2`` adds SAM and SAM-ON with a SAM step every second step. ``--ddp`` adds runs
on 2 CPU processes (``ddp_spawn``, gloo, 32 images per process): SGD, SAM and SAM-ON with the
default ``perturbation="global"`` (the peers: BatchNorm then normalises per process) and with
``"local"`` (each process perturbs with its own gradient). ``--fp16`` adds SGD, SAM and SAM-ON in
16-bit mixed precision with a GradScaler (Lightning's ``MixedPrecision`` plugin with an explicit
CPU scaler: plain ``precision="16-mixed"`` becomes bf16 on CPU). ``--methods`` picks a subset of
the rows by name.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.datamodules import DigitsDataModule
from lightning_climate.tasks import ClassificationTask

GLOBAL_BATCH = 64
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "deterministic": True,
}


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


def fp16_with_scaler() -> MixedPrecision:
    """16-bit autocast with a GradScaler on CPU (what ``precision="16-mixed"`` is on a GPU)."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def run(
    seed: int,
    epochs: int,
    callback: SharpnessAwareMinimization | None,
    devices: int = 1,
    fp16: bool = False,
) -> tuple[float, float]:
    """Train one configuration; return the test accuracy (%) and loss, tested in this process."""
    seed_everything(seed, verbose=False)
    task = ClassificationTask(small_cnn(), num_classes=10, optimizer=sgd, label_smoothing=0.1)
    dm = DigitsDataModule(batch_size=GLOBAL_BATCH // devices, seed=seed)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=epochs,
        callbacks=[] if callback is None else [callback],
        plugins=[fp16_with_scaler()] if fp16 else None,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **QUIET,
    )
    before = [p.detach().clone() for p in task.parameters()]
    trainer.fit(task, dm)  # ddp_spawn loads rank 0's trained weights back into `task`
    if all(torch.equal(a, p) for a, p in zip(before, task.parameters(), strict=True)):
        raise RuntimeError("the trained weights did not reach the testing process")
    tester = Trainer(accelerator="cpu", **QUIET)  # every row is tested alike, in fp32
    (result,) = tester.test(
        task, DigitsDataModule(batch_size=GLOBAL_BATCH, seed=seed), verbose=False
    )
    return 100.0 * result["test_Accuracy"], result["test_loss"]


def methods(args: argparse.Namespace) -> dict[str, Callable[[int], tuple[float, float]]]:
    """Name of each row -> a run of it for a seed."""
    sam = functools.partial(SharpnessAwareMinimization, rho=args.rho_sam)
    samon = functools.partial(SharpnessAwareMinimization, rho=args.rho_samon, norm_only=True)
    rows: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
        "SGD": (lambda: None, {}),
        "SAM": (sam, {}),
        "SAM-ON": (samon, {}),
    }
    for n in args.every_n_steps:
        rows[f"SAM every {n}"] = (functools.partial(sam, every_n_steps=n), {})
        rows[f"SAM-ON every {n}"] = (functools.partial(samon, every_n_steps=n), {})
    if args.ddp:
        two = {"devices": 2}
        rows["SGD, 2 processes"] = (lambda: None, two)
        rows["SAM global, 2 processes"] = (sam, two)
        rows["SAM local, 2 processes"] = (functools.partial(sam, perturbation="local"), two)
        rows["SAM-ON global, 2 processes"] = (samon, two)
        rows["SAM-ON local, 2 processes"] = (functools.partial(samon, perturbation="local"), two)
    if args.fp16:
        half = {"fp16": True}
        rows["SGD, 16-mixed + GradScaler"] = (lambda: None, half)
        rows["SAM, 16-mixed + GradScaler"] = (sam, half)
        rows["SAM-ON, 16-mixed + GradScaler"] = (samon, half)
    if args.methods:
        unknown = set(args.methods) - set(rows)
        if unknown:
            raise SystemExit(f"--methods: unknown rows {sorted(unknown)}; choose from {list(rows)}")
        rows = {name: rows[name] for name in args.methods}
    return {
        name: functools.partial(
            lambda seed, make, kw: run(seed, args.epochs, make(), **kw), make=make, kw=kw
        )
        for name, (make, kw) in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rho-sam", type=float, default=0.05)
    parser.add_argument("--rho-samon", type=float, default=0.5)
    parser.add_argument("--every-n-steps", type=int, nargs="*", default=[])
    parser.add_argument("--ddp", action="store_true", help="add the 2-process rows")
    parser.add_argument("--fp16", action="store_true", help="add the 16-mixed GradScaler rows")
    parser.add_argument("--methods", nargs="*", help="names of the rows to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"rho: SAM {args.rho_sam}, SAM-ON {args.rho_samon}")
    rows = []
    for name, train in methods(args).items():
        results = [train(seed) for seed in args.seeds]
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
