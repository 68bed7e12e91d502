"""The SAM-ON paper's CIFAR-100 WRN-28-10 comparison: SGD, SAM and SAM-ON, each at its own rho (GPU).

Runs ``examples/cifar100_wrn28_10_{sgd,sam,samon}.yaml`` unchanged through the package's
LightningCLI (SGD lr 0.1 / momentum 0.9 / weight decay 5e-4 / Nesterov, cosine schedule, batch 128,
label smoothing 0.1, crop + flip; SAM rho 0.2, SAM-ON rho 1.0 on the BatchNorm parameters), then
tests each model, for every seed. Prints test accuracy (mean +- std over seeds) next to the paper's
Fig. 1 values, and the median step time of each method with the ratios SAM / SGD and
SAM-ON / SAM measured in the same run. Needs the CIFAR-100 files (binary or python version)
under ``--root`` and a GPU: a 200-epoch run takes many GPU-hours; ``--epochs 10`` gives the step
times and a first look.

    python benchmarks/sam_cifar100_wrn.py --root data --epochs 200 --seeds 0 1 2

``--cli-args`` appends LightningCLI arguments to every run, e.g. a quick CPU check of the
script on generated files (``python -m lightning_climate.datasets.cifar --root DIR``):
``--cli-args "--model.init_args.model.init_args.depth 10 --trainer.accelerator cpu ..."``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

import lightning_climate.main  # noqa: F401  (registers the package's classes by short name)
from lightning_climate.cli import ClimateCLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: test accuracy (%) at each method's best rho, read from the SAM-ON paper's Fig. 1 (±0.05).
PAPER = {"sgd": 80.7, "sam": 83.6, "samon": 84.2}


class StepTimer(Callback):
    """Wall time of each training batch (optimizer step included), synchronised on CUDA."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, *args: object
    ) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: object
    ) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def steady_median(self) -> float:
        """Median step time after the first 20 steps (warm-up, cuDNN autotuning)."""
        return statistics.median(self.times[20:] or self.times)


def run(method: str, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """Train and test one method and seed; returns (test accuracy %, median step time s)."""
    cli = ClimateCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            str(EXAMPLES / f"cifar100_wrn28_10_{method}.yaml"),
            "--seed_everything",
            str(seed),
            "--data.init_args.root",
            str(args.root),
            "--trainer.max_epochs",
            str(args.epochs),
            "--model.init_args.lr_scheduler.init_args.T_max",
            str(args.epochs),
            "--trainer.default_root_dir",
            str(args.out / f"{method}_seed{seed}"),
            *shlex.split(args.cli_args),
        ],
    )
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    (result,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    return 100.0 * result["test_Accuracy"], timer.steady_median()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder with CIFAR-100")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/sam_cifar100_wrn"))
    parser.add_argument("--methods", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--cli-args", default="", help="extra LightningCLI arguments, quoted")
    args = parser.parse_args()
    accuracy: dict[str, list[float]] = {m: [] for m in args.methods}
    step: dict[str, list[float]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # methods alternate, so load changes affect all of them alike
        for method in args.methods:
            acc, seconds = run(method, seed, args)
            accuracy[method].append(acc)
            step[method].append(seconds)
            print(
                f"{method} seed {seed}: test accuracy {acc:.2f} %, {seconds:.4f} s/step", flush=True
            )
    print(f"\nCIFAR-100, WRN-28-10, {args.epochs} epochs, seeds {args.seeds}\n")
    print("| method | test accuracy % (mean ± std) | paper Fig. 1 | median s/step |")
    print("|---|---|---|---|")
    for method in args.methods:
        accs = accuracy[method]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"| {method} | {statistics.mean(accs):.2f} ± {spread:.2f} | {PAPER[method]} "
            f"| {statistics.median(step[method]):.4f} |"
        )
    med = {m: statistics.median(t) for m, t in step.items()}
    if {"sgd", "sam"} <= med.keys():
        print(f"\nSAM / SGD step time: {med['sam'] / med['sgd']:.3f}")
    if {"sam", "samon"} <= med.keys():
        print(f"SAM-ON / SAM step time: {med['samon'] / med['sam']:.3f}")


if __name__ == "__main__":
    main()
