"""Samples/s and peak memory of the lazy ClimateSet reader against xarray.open_mfdataset, one run.

Generates a ClimateSet-layout tree (one NetCDF file per variable and year, fletcher32 checksums)
with :func:`~lightning_climate.datasets.generate_climateset` for NorESM2-LM on ssp126, ssp370 and
ssp585; ``--size-gb`` picks a finer grid than the release's 96 x 144 so that the tree is that
large, several times the reader's peak memory. The same random samples (one calendar year: 12
months of 4 forcings and 2 outputs) are read by each method through a DataLoader:

- ``lazy``: our :class:`~lightning_climate.datasets.ClimateSet`, which opens the 6 files of a
  sample inside ``__getitem__`` (every check on: names, calendars, grids, fill values, plausible
  ranges, checksums);
- ``mfdataset``: the lazy peer, one ``xarray.open_mfdataset`` per variable over all its yearly
  files (``combine="nested"``, one year per dask chunk), a sample selected by ``isel`` and computed;
- ``cached``: ours with ``load_into_memory()`` (``in_memory: true`` in the datamodule);
- ``xarray``: the reference emulator code, ``open_mfdataset(...).compute()`` of every file into RAM.

The last two hold the whole data set in memory, so they are only for data that fits (``--methods``
picks). Each (method, workers) run is a fresh subprocess: ``main`` is its peak RSS (``VmHWM``),
``start`` its RSS once the dataset is built, ``worker`` the largest DataLoader worker
(``RUSAGE_CHILDREN``). Samples/s of the first epoch include the setup (opening, or loading
everything); the last epoch is the steady state. All methods must give the same sum of ``y**2``.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/climateset_loading.py                  # 60 samples, 96 x 144
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/climateset_loading.py --size-gb 3 \\
        --last-year 2100 --methods lazy mfdataset --samples 60 --epochs 1

Needs ``dask`` for ``open_mfdataset`` (``pip install 'lightning-climate[benchmarks]'``). The
generated tree is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

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
RELEASE_GRID = (96, 144)
METHODS = ("lazy", "mfdataset", "cached", "xarray")


def yearly_files(root: Path, years: list[int]) -> dict[str, list[Path]]:
    """Variable -> its yearly files, scenario by scenario, in the order of ClimateSet's samples."""

    def one(folder: Path, fire: str | None) -> Path:
        return next(p for p in sorted(folder.rglob("*.nc")) if fire is None or fire in p.name)

    files = {
        var: [
            one(input_dir(root, s, var, y), fire_spec(MODEL, s, var))
            for s in SCENARIOS
            for y in years
        ]
        for var in INPUT_VARS
    }
    for var in OUTPUT_VARS:
        files[var] = [
            one(output_dir(root, MODEL, MEMBER, s, var, y), None) for s in SCENARIOS for y in years
        ]
    return files


def _open(paths: list[Path], var: str, chunks: dict[str, int] | None) -> Any:
    """One variable of the yearly files, concatenated along time (xarray.DataArray)."""
    import xarray as xr

    ds = xr.open_mfdataset(
        paths, combine="nested", concat_dim="time", use_cftime=True, chunks=chunks,
        data_vars="minimal", coords="minimal", compat="override",
    )  # fmt: skip
    return ds[var if var in ds else next(iter(ds.data_vars))]


class InMemory(Dataset):
    """The reference layout after loading: (N, 12, C, H, W) arrays held in RAM."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        def stack(var: str) -> np.ndarray:
            values = _open(files[var], var, None).compute().values.astype(np.float32)
            return values.reshape(len(files[var]), 12, *values.shape[1:])

        self.x = np.stack([stack(v) for v in INPUT_VARS], axis=2)
        self.y = np.stack([stack(v) for v in OUTPUT_VARS], axis=2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "x": torch.from_numpy(self.x[index]),
            "y": torch.from_numpy(self.y[index]),
            "index": torch.tensor(index),
        }


class MFDataset(Dataset):
    """The lazy peer: one ``open_mfdataset`` per variable, a year of 12 months per sample."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        self.inputs = [_open(files[v], v, {"time": 12}) for v in INPUT_VARS]
        self.outputs = [_open(files[v], v, {"time": 12}) for v in OUTPUT_VARS]

    def __len__(self) -> int:
        return self.outputs[0].sizes["time"] // 12

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        months = slice(12 * index, 12 * index + 12)

        def fields(arrays: list[Any]) -> torch.Tensor:
            values = [a.isel(time=months).values.astype(np.float32) for a in arrays]
            return torch.from_numpy(np.stack(values, axis=1))

        return {"x": fields(self.inputs), "y": fields(self.outputs), "index": torch.tensor(index)}


def _status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 1024.0


def child(args: argparse.Namespace) -> None:
    years = list(range(args.first_year, args.last_year + 1))
    start = time.perf_counter()
    if args.method == "lazy":
        dataset: Dataset = ClimateSet(args.root, [MODEL], SCENARIOS, years)
    elif args.method == "cached":
        dataset = ClimateSet(args.root, [MODEL], SCENARIOS, years).load_into_memory()
    elif args.method == "mfdataset":
        dataset = MFDataset(yearly_files(args.root, years))
    else:
        dataset = InMemory(yearly_files(args.root, years))
    setup = time.perf_counter() - start
    sampler = RandomSampler(
        dataset,
        num_samples=args.samples or len(dataset),
        generator=torch.Generator().manual_seed(0),
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, sampler=sampler
    )
    start_mb = _status_mb("VmRSS:")
    epochs = []
    for _ in range(args.epochs):
        t0, checksum = time.perf_counter(), 0.0
        for batch in loader:
            checksum += float(batch["y"].double().square().sum())
        epochs.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "samples": len(dataset),
                "read": len(sampler),
                "setup_s": setup,
                "first_s": setup + epochs[0],
                "last_s": epochs[-1],
                "start_mb": start_mb,
                "main_mb": _status_mb("VmHWM:"),
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
                "checksum": checksum,
            }
        )
    )


def _grid(args: argparse.Namespace, samples: int) -> tuple[int, int]:
    """``--grid``, or the release grid refined until the tree holds about ``--size-gb``."""
    if not args.size_gb:
        return tuple(args.grid)
    per_cell = samples * 12 * (len(INPUT_VARS) + len(OUTPUT_VARS)) * 4  # float32 bytes
    scale = math.sqrt(args.size_gb * 1e9 / per_cell / (RELEASE_GRID[0] * RELEASE_GRID[1]))
    return max(2, round(RELEASE_GRID[0] * scale)), max(2, round(RELEASE_GRID[1] * scale))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/climateset_bench"))
    parser.add_argument("--first-year", type=int, default=2015)
    parser.add_argument("--last-year", type=int, default=2034)
    parser.add_argument("--grid", type=int, nargs=2, default=list(RELEASE_GRID))
    parser.add_argument("--size-gb", type=float, default=0.0, help="refine the grid to this size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=0, help="random samples per epoch (0: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.workers = args.workers[0]
        child(args)
        return
    years = list(range(args.first_year, args.last_year + 1))
    grid = _grid(args, len(SCENARIOS) * len(years))
    root = args.root / f"grid{grid[0]}x{grid[1]}"
    generate_climateset(root, [MODEL], SCENARIOS, years, grid_shape=grid)
    data_mb = sum(p.stat().st_size for p in root.rglob("*.nc")) / 2**20
    rows = {}
    try:
        for workers in args.workers:
            for method in args.methods:
                cmd = [sys.executable, __file__, "--method", method, "--workers", str(workers)]
                cmd += ["--root", str(root), "--batch-size", str(args.batch_size)]
                cmd += ["--first-year", str(args.first_year), "--last-year", str(args.last_year)]
                cmd += ["--samples", str(args.samples), "--epochs", str(args.epochs)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows[(method, workers)] = json.loads(out.strip().splitlines()[-1])
                print(method, workers, rows[(method, workers)], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root)
    first = rows[(args.methods[0], args.workers[0])]
    n = first["read"]
    print(
        f"{n} random of {first['samples']} samples of 12 x (4 + 2) fields on a {grid[0]} x "
        f"{grid[1]} grid, {data_mb:.0f} MB on disk, batch {args.batch_size}, {args.epochs} epochs"
    )
    print(
        "method     workers  setup s  first epoch samples/s  last epoch samples/s  start MB  "
        "main peak MB  worker peak MB"
    )
    for (method, workers), r in rows.items():
        worker = f"{r['worker_mb']:15.0f}" if workers else f"{'-':>15s}"
        print(
            f"{method:10s} {workers:7d} {r['setup_s']:8.2f} {n / r['first_s']:23.2f} "
            f"{n / r['last_s']:21.2f} {r['start_mb']:9.0f} {r['main_mb']:13.0f} {worker}"
        )
    for workers in args.workers:
        for peer_name in (m for m in ("mfdataset", "xarray") if m in args.methods):
            peer = rows[(peer_name, workers)]
            for method in (m for m in ("lazy", "cached") if m in args.methods):
                ours = rows[(method, workers)]
                agree = abs(ours["checksum"] - peer["checksum"]) <= 1e-6 * abs(peer["checksum"])
                assert agree, f"{method} and {peer_name} disagree"
                peak = max(ours["main_mb"], ours["worker_mb"] if workers else 0.0)
                print(
                    f"workers={workers}: {method}/{peer_name} samples/s first epoch "
                    f"{peer['first_s'] / ours['first_s']:.2f}x, last epoch "
                    f"{peer['last_s'] / ours['last_s']:.2f}x; peak memory main "
                    f"{ours['main_mb'] / peer['main_mb']:.2f}x; data on disk / {method} peak RSS "
                    f"{data_mb / peak:.1f}x"
                )


if __name__ == "__main__":
    main()
