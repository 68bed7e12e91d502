"""Samples/s and peak memory of the lazy ERA5 reader against xarray.open_mfdataset, one run.

Generates ERA5-format yearly NetCDF files (6-hourly, checksummed, one field per chunk) whose total
size is several times the reader's peak memory, then reads the same random full-field samples (t2m, tcw and t, z at 850/500 hPa: 6 channels) with each loader and 0 and 2 DataLoader
workers. ``ours`` is :class:`~lightning_climate.datasets.ERA5Dataset` (every check on: checksums,
NaN, consistency of the index); ``mfdataset`` is the usual peer, ``xarray.open_mfdataset`` with
one time per dask chunk, indexed per sample, the same crop, flip and block mean. Each (loader,
workers) run is a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own: ``main`` is the
loading process (its own ``VmHWM``: ``ru_maxrss`` survives ``exec``, so it would report the
generating parent's peak), ``worker`` the largest DataLoader worker (``RUSAGE_CHILDREN``).

    PYTHONPATH=. python benchmarks/era5_loading.py --root /tmp/era5_bench --years 2000 2001 2002 2003 2004 2005

Needs ``dask`` for ``open_mfdataset`` (``pip install 'lightning-climate[benchmarks]'``).
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
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lightning_climate.datasets import ERA5Dataset, generate_era5
from lightning_climate.layers.constraints import block_mean

VARIABLES = ["t2m", "tcw", "t", "z"]


class MFDataset(Dataset):
    """The peer: one lazy ``open_mfdataset`` over the years, a sample indexed per time step."""

    def __init__(self, files: list[Path], factor: int) -> None:
        import xarray as xr

        self.ds = xr.open_mfdataset(files, combine="by_coords", chunks={"valid_time": 1})
        self.factor = factor
        rows = self.ds.sizes["latitude"] // factor * factor
        cols = self.ds.sizes["longitude"] // factor * factor
        self.crop = {"latitude": slice(-rows, None), "longitude": slice(0, cols)}

    def __len__(self) -> int:
        return self.ds.sizes["valid_time"]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        step = self.ds[VARIABLES].isel(valid_time=index, **self.crop).compute()
        fields = [np.atleast_3d(step[v].values.T).T for v in VARIABLES]  # (levels, lat, lon)
        hr = torch.from_numpy(np.concatenate(fields)[:, ::-1].astype(np.float32).copy())
        return {"hr": hr, "lr": block_mean(hr, self.factor), "index": torch.tensor(index)}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): ru_maxrss would carry over the parent's across exec."""
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024.0


def child(args: argparse.Namespace) -> None:
    files = sorted(args.root.glob("era5_*.nc"))
    start = time.perf_counter()
    if args.method == "ours":
        dataset: Dataset = ERA5Dataset(files, VARIABLES, factor=args.factor)
    else:
        dataset = MFDataset(files, args.factor)
    setup = time.perf_counter() - start
    # the same random samples for both loaders (a full epoch of a data set this size takes long)
    sampler = RandomSampler(
        dataset, num_samples=args.samples, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, sampler=sampler
    )
    t0 = time.perf_counter()
    checksum = 0.0
    for batch in loader:
        checksum += float(batch["lr"].double().mean(dim=(2, 3)).sum())
    epoch = time.perf_counter() - t0
    kib = 1024.0
    print(
        json.dumps(
            {
                "samples": len(dataset),
                "setup_s": setup,
                "epoch_s": epoch,
                "main_mb": _peak_rss_mb(),
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
                "checksum": checksum,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/era5_bench"))
    parser.add_argument("--years", type=int, nargs="+", default=[2000, 2001])
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--grid", type=int, nargs=2, default=[91, 180])
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=800, help="random samples read per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--method", choices=["ours", "mfdataset"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.workers = args.workers[0]
        child(args)
        return
    files = generate_era5(args.root, args.years, hours=args.hours, grid=tuple(args.grid))
    data_mb = sum(f.stat().st_size for f in files) / 2**20
    rows = {}
    for workers in args.workers:
        for method in ("ours", "mfdataset"):
            cmd = [sys.executable, __file__, "--method", method, "--workers", str(workers)]
            cmd += ["--root", str(args.root), "--factor", str(args.factor)]
            cmd += ["--batch-size", str(args.batch_size), "--samples", str(args.samples)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[(method, workers)] = json.loads(out.strip().splitlines()[-1])
            print(method, workers, rows[(method, workers)], flush=True)
    n = args.samples
    print(
        f"{n} random of {rows[('ours', args.workers[0])]['samples']} samples of 6 channels on a "
        f"{args.grid[0]} x {args.grid[1]} grid, {len(files)} files, {data_mb:.0f} MB on disk, "
        f"batch {args.batch_size}"
    )
    print("loader     workers  setup s  samples/s  main peak MB  worker peak MB")
    for (method, workers), r in rows.items():
        worker = f"{r['worker_mb']:15.0f}" if workers else f"{'-':>15s}"
        print(
            f"{method:10s} {workers:7d} {r['setup_s']:8.2f} {n / r['epoch_s']:10.1f} "
            f"{r['main_mb']:13.0f} {worker}"
        )
    for workers in args.workers:
        ours, peer = rows[("ours", workers)], rows[("mfdataset", workers)]
        agree = abs(ours["checksum"] - peer["checksum"]) < 1e-6 * abs(peer["checksum"])
        assert agree, f"the two loaders disagree: {ours['checksum']} vs {peer['checksum']}"
        peak = max(ours["main_mb"], ours["worker_mb"] if workers else 0.0)
        print(
            f"workers={workers}: ours/mfdataset samples/s {peer['epoch_s'] / ours['epoch_s']:.2f}x, "
            f"setup {ours['setup_s'] / peer['setup_s']:.2f}x, peak memory main "
            f"{ours['main_mb'] / peer['main_mb']:.2f}x; data on disk / our peak RSS "
            f"{data_mb / peak:.1f}x"
        )


if __name__ == "__main__":
    main()
