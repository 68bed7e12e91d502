"""Samples/s and peak memory of the lazy ClimateSet reader against xarray.open_mfdataset into memory.

The reference emulator code reads every yearly file of a variable with
``xr.open_mfdataset(..., combine="nested", concat_dim="time").compute()`` and keeps the whole
train split in RAM. Our :class:`~lightning_climate.datasets.ClimateSet` opens the 6 files of one
sample inside ``__getitem__`` instead. Each (method, workers) run is a fresh subprocess, so its peak
RSS (``ru_maxrss``) is its own: ``main`` is the loading process, ``worker`` the largest DataLoader
worker. Epoch 1 includes the up-front loads; epoch 2 is the steady state. ``cached`` is our reader
with ``load_into_memory()`` (``in_memory=True`` in the datamodule).

    python benchmarks/climateset_loading.py --root /tmp/climateset_bench --first-year 2015 --last-year 2034

Needs ``dask`` for ``open_mfdataset`` (``pip install dask``); the tree is generated if missing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_climate.datasets import ClimateSet, generate_climateset
from lightning_climate.datasets.climateset import (
    INPUT_VARS,
    OUTPUT_VARS,
    fire_spec,
    input_dir,
    output_dir,
)

MODEL, MEMBER = "NorESM2-LM", "r1i1p1f1"
SCENARIOS = ["ssp126", "ssp370", "ssp585"]


class InMemory(Dataset):
    """The reference layout after loading: (N, 12, C, H, W) arrays held in RAM."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "x": torch.from_numpy(self.x[index]),
            "y": torch.from_numpy(self.y[index]),
            "index": torch.tensor(index),
        }


def load_with_xarray(root: Path, years: list[int]) -> InMemory:
    import xarray as xr

    def stack(paths: list[Path], var: str) -> np.ndarray:
        with xr.open_mfdataset(paths, combine="nested", concat_dim="time", use_cftime=True) as ds:
            name = var if var in ds else next(iter(ds.data_vars))
            values = ds[name].compute().values.astype(np.float32)
        return values.reshape(len(paths), 12, *values.shape[1:])

    def files(folder: Path, fire: str | None) -> Path:
        return next(p for p in sorted(folder.rglob("*.nc")) if fire is None or fire in p.name)

    xs, ys = [], []
    for var in INPUT_VARS:
        paths = [
            files(input_dir(root, s, var, y), fire_spec(MODEL, s, var))
            for s in SCENARIOS
            for y in years
        ]
        xs.append(stack(paths, var))
    for var in OUTPUT_VARS:
        paths = [
            files(output_dir(root, MODEL, MEMBER, s, var, y), None)
            for s in SCENARIOS
            for y in years
        ]
        ys.append(stack(paths, var))
    return InMemory(np.stack(xs, axis=2), np.stack(ys, axis=2))


def child(args: argparse.Namespace) -> None:
    years = list(range(args.first_year, args.last_year + 1))
    start = time.perf_counter()
    if args.method == "lazy":
        dataset: Dataset = ClimateSet(args.root, [MODEL], SCENARIOS, years)
    elif args.method == "cached":
        dataset = ClimateSet(args.root, [MODEL], SCENARIOS, years).load_into_memory()
    else:
        dataset = load_with_xarray(args.root, years)
    setup = time.perf_counter() - start
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=True)
    epochs, checksum = [], 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        for batch in loader:
            checksum += float(batch["y"][:, 0, 0].mean())
        epochs.append(time.perf_counter() - t0)
    kib = 1024.0
    print(
        json.dumps(
            {
                "samples": len(dataset),
                "setup_s": setup,
                "epoch1_s": setup + epochs[0],
                "epoch2_s": epochs[1],
                "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
                "checksum": checksum,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/climateset_bench"))
    parser.add_argument("--first-year", type=int, default=2015)
    parser.add_argument("--last-year", type=int, default=2034)
    parser.add_argument("--grid", type=int, nargs=2, default=[96, 144])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--method", choices=["lazy", "cached", "xarray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.workers = args.workers[0]
        child(args)
        return
    years = list(range(args.first_year, args.last_year + 1))
    generate_climateset(args.root, [MODEL], SCENARIOS, years, grid_shape=tuple(args.grid))
    rows = {}
    for workers in args.workers:
        for method in ("lazy", "cached", "xarray"):
            cmd = [
                sys.executable,
                __file__,
                "--method",
                method,
                "--workers",
                str(workers),
                "--root",
                str(args.root),
            ]
            cmd += ["--first-year", str(args.first_year), "--last-year", str(args.last_year)]
            cmd += ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[(method, workers)] = json.loads(out.strip().splitlines()[-1])
    n = rows[("lazy", args.workers[0])]["samples"]
    print(
        f"{n} samples of 12 x (4 + 2) fields on a {args.grid[0]} x {args.grid[1]} grid, batch {args.batch_size}"
    )
    print("method  workers  epoch1 samples/s  epoch2 samples/s  main peak MB  worker peak MB")
    for (method, workers), r in rows.items():
        print(
            f"{method:7s} {workers:7d} {n / r['epoch1_s']:17.1f} {n / r['epoch2_s']:17.1f} "
            f"{r['main_mb']:13.0f} {r['worker_mb']:15.0f}"
        )
    for workers in args.workers:
        xarr = rows[("xarray", workers)]
        for method in ("lazy", "cached"):
            ours = rows[(method, workers)]
            agree = abs(ours["checksum"] - xarr["checksum"]) < 1e-3 * abs(xarr["checksum"])
            assert agree, f"{method} and xarray loaders disagree"
            print(
                f"workers={workers}: {method}/xarray samples/s epoch1 "
                f"{xarr['epoch1_s'] / ours['epoch1_s']:.2f}x, epoch2 "
                f"{xarr['epoch2_s'] / ours['epoch2_s']:.2f}x; peak memory main "
                f"{ours['main_mb'] / xarr['main_mb']:.2f}x, worker {ours['worker_mb'] / xarr['worker_mb']:.2f}x"
            )


if __name__ == "__main__":
    main()
