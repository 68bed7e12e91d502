"""Evidence table in the spirit of Harder et al. Table 3, on the embedded real ERA5 sample.

Trains the SR-CNN (``lightning_climate.models.SRCNN``) at 2x on 500 hPa temperature patches with
no constraint, the soft constraint (alpha = 0.99) and each hard layer, with the same seed, data and
steps, and prints test MSE (K^2) and the conservation violation (K) in physical units, next to
nearest ("enlarge") and bicubic interpolation. The models see min-max normalised fields
(``Normalizer("hr", "minmax")`` fitted on the training statistics); the coarse field is the block
mean of the normalised fine field, as Harder et al. train.

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/constraints_era5.py --steps 400 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_climate.datamodules import ERA5DataModule
from lightning_climate.layers import ConstrainedModel, Normalizer
from lightning_climate.layers.constraints import block_mean
from lightning_climate.losses import soft_constraint_loss
from lightning_climate.metrics import ConstraintViolation
from lightning_climate.models import SRCNN

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "era5" / "era5_sample.nc"
CONFIGS = ["none", "soft", "add", "mult", "softmax", "scadd"]


def _datamodule() -> ERA5DataModule:
    dm = ERA5DataModule(
        str(SAMPLE),
        variables=["t"],
        levels=[500],
        factor=2,
        patch_size=20,
        train_range=("2017-01-01T00", "2017-01-01T12"),
        val_range=("2017-01-02T00", "2017-01-02T00"),
        test_range=("2017-01-02T12", "2017-01-02T12"),
        batch_size=16,
    )
    dm.setup("fit")
    return dm


def _normalizer(dm: ERA5DataModule) -> Normalizer:
    """Min-max map of the training range to [0, 1] (scale = max - min, no eps)."""
    norm = Normalizer("hr", "minmax")
    norm.fit(dm.train_statistics())
    return norm


def _normalised(batch: dict[str, Tensor], norm: Normalizer) -> tuple[Tensor, Tensor]:
    """Normalised ``(lr, hr)``: ``lr`` is the 2x block mean of the normalised ``hr``."""
    hr = norm(batch["hr"])
    return block_mean(hr, 2), hr


def _evaluate(predict, dm: ERA5DataModule, norm: Normalizer) -> tuple[float, float, float]:
    """Test MSE (K^2), mean and max violation (K), all after de-normalising."""
    sq, n = 0.0, 0
    mean, mx = ConstraintViolation("mean"), ConstraintViolation("max")
    with torch.no_grad():
        for batch in DataLoader(dm.test_dataset, batch_size=32):
            lr_n, hr_n = _normalised(batch, norm)
            lr, hr = norm.inverse(lr_n), norm.inverse(hr_n)
            pred = norm.inverse(predict(lr_n))
            sq += F.mse_loss(pred.double(), hr.double(), reduction="sum").item()
            n += hr.numel()
            mean.update(pred, lr)
            mx.update(pred, lr)
    return sq / n, mean.compute().item(), mx.compute().item()


def _train(
    config: str, dm: ERA5DataModule, norm: Normalizer, steps: int, seed: int, hidden: int
) -> ConstrainedModel:
    torch.manual_seed(seed)
    constraint = "none" if config in ("none", "soft") else config
    model = ConstrainedModel(SRCNN(1, factor=2, hidden_channels=hidden), constraint)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        dm.train_dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    step = 0
    while step < steps:
        for batch in loader:
            lr, hr = _normalised(batch, norm)
            pred = model(lr)
            if config == "soft":
                loss = soft_constraint_loss(pred, hr, lr, alpha=0.99)
            else:
                loss = F.mse_loss(pred, hr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--hidden", type=int, default=32, help="SR-CNN feature channels")
    args = parser.parse_args()
    dm = _datamodule()
    norm = _normalizer(dm)
    print(
        f"train {len(dm.train_dataset)} / test {len(dm.test_dataset)} patches of 20x20 (lr 10x10)"
    )
    rows = {
        "enlarge": _evaluate(
            lambda lr: lr.repeat_interleave(2, -2).repeat_interleave(2, -1), dm, norm
        ),
        "bicubic": _evaluate(
            lambda lr: F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False),
            dm,
            norm,
        ),
    }
    for config in CONFIGS:
        start = time.perf_counter()
        runs = [
            _evaluate(_train(config, dm, norm, args.steps, s, args.hidden), dm, norm)
            for s in args.seeds
        ]
        rows[config] = tuple(sum(r[i] for r in runs) / len(runs) for i in range(3))
        print(f"{config}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nSR-CNN({args.hidden}) 2x, t500, {args.steps} steps, mean over seeds {args.seeds}")
    print("| method | test MSE (K^2) | mean violation (K) | max violation (K) |")
    print("| --- | --- | --- | --- |")
    for name, (mse, vmean, vmax) in rows.items():
        print(f"| {name} | {mse:.4f} | {vmean:.2e} | {vmax:.2e} |")


if __name__ == "__main__":
    main()
