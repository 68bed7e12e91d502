"""GraNd at scale: the last-layer approximation against full GraNd, and memory per chunk.

1. Spearman and Pearson correlation between full GraNd (all parameters) and the last-layer
   approximation (``grand(..., parameters=[<last layer>])``) on the real sklearn digits, for an
   MLP and a CNN after 1 and 10 epochs of training, and on a CIFAR-size ResNet-18 (3x3 stem,
   32x32 synthetic images with a learnable class signal, a few SGD steps); with the time of each.
2. Peak RSS added by full GraNd of that ResNet-18 (11 M parameters) over 64 examples for several
   ``chunk_size`` values, each in a fresh process (Linux: the peak is reset through
   ``/proc/self/clear_refs`` before the call): the per-example gradients of one chunk are reduced
   to norms before the next, so memory grows with the chunk, not with the batch.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/difficulty_grand.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits
from torch import Tensor, nn

from lightning_climate.analysis.scores import grand


def resnet18_cifar() -> nn.Module:
    """timm's ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool), 10 classes."""
    import timm

    model = timm.create_model("resnet18", num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, batch: int = 64) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (batch,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[pick]), y[pick]).backward()
        optimizer.step()
    model.eval()


def compare(name: str, model: nn.Module, last: str, x: Tensor, y: Tensor, chunk: int) -> None:
    start = time.perf_counter()
    full = grand(model, x, y, chunk_size=chunk).numpy()
    full_time = time.perf_counter() - start
    start = time.perf_counter()
    approx = grand(model, x, y, chunk_size=chunk, parameters=[last]).numpy()
    last_time = time.perf_counter() - start
    print(
        f"| {name} | {len(x)} | {spearmanr(full, approx).statistic:.3f} | {pearsonr(full, approx).statistic:.3f} "
        f"| {full_time:.2f} | {last_time:.2f} | {full_time / last_time:.1f}x |"
    )


def correlations(cifar_examples: int) -> None:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    print(
        "| model | examples | Spearman(full, last layer) | Pearson | full (s) | last layer (s) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch in ("mlp", "cnn"):
        for epochs in (1, 10):
            torch.manual_seed(0)
            if arch == "mlp":
                model = nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(64, 64),
                    nn.ReLU(),
                    nn.Linear(64, 32),
                    nn.ReLU(),
                    nn.Linear(32, 10),
                )
                last = "5"
            else:
                model = nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10),
                )  # fmt: skip
                last = "6"
            train(model, x, y, steps=epochs * len(x) // 64, lr=0.05)
            compare(f"digits {arch}, epoch {epochs}", model, last, x, y, chunk=256)
    torch.manual_seed(0)
    model = resnet18_cifar()
    prototypes = torch.randn(10, 3, 32, 32)
    labels = torch.randint(0, 10, (max(cifar_examples, 256),))
    images = prototypes[labels] + 2.0 * torch.randn(len(labels), 3, 32, 32)
    train(model, images, labels, steps=20, lr=0.02)
    compare(
        "ResNet-18 CIFAR-size, 20 steps",
        model,
        "fc",
        images[:cifar_examples],
        labels[:cifar_examples],
        chunk=8,
    )


_MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
from difficulty_grand import resnet18_cifar
from lightning_climate.analysis.scores import grand

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

torch.manual_seed(0)
model = resnet18_cifar().eval()
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
grand(model, x, y, chunk_size={chunk})
print(base, status("VmHWM"))
"""


def memory(chunks: list[int]) -> None:
    params = sum(p.numel() for p in resnet18_cifar().parameters())
    print(f"\n| GraNd of ResNet-18 ({params / 1e6:.1f} M parameters), 64 examples: chunk_size | peak RSS (MiB) | "
          "added by GraNd (MiB) | one chunk's float32 gradients (MiB) |")  # fmt: skip
    print("|---|---|---|---|")
    bench = str(Path(__file__).parent)
    for chunk in chunks:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD.format(bench=bench, chunk=chunk)],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        base, peak = int(out[0]) / 1024, int(out[1]) / 1024
        print(f"| {chunk} | {peak:.0f} | {peak - base:.0f} | {chunk * params * 4 / 2**20:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar-examples", type=int, default=128)
    parser.add_argument("--chunks", type=int, nargs="*", default=[2, 8, 32])
    parser.add_argument("--part", choices=["correlation", "memory", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in ("correlation", "both"):
        correlations(args.cifar_examples)
    if args.part in ("memory", "both"):
        memory(args.chunks)


if __name__ == "__main__":
    main()
