"""Samples/s and peak memory of the Navier-Stokes datamodule against a plain h5py reader, one run.

Writes one HDF5 file in our layout with :func:`~lightning_climate.datasets.generate_navier_stokes`
(the real solver and writer: one fletcher32-checksummed chunk per trajectory) whose size
(``--size-gb``) is several times the reader's peak memory. To make gigabytes in minutes, each
trajectory records every solver step of ``dt = 1e-3`` (``t_final = steps * dt``): valid solutions,
close to their Gaussian-random-field initial conditions. Then the same random snapshots are read
with each loader through a DataLoader (0 and 2 workers): ``ours`` is the training set of
:class:`~lightning_climate.datamodules.NavierStokesDataModule` (every trajectory in ``train``,
``hr`` the stored field, ``lr`` its block mean, finiteness checked); ``h5py`` is the peer, the
``vorticity`` dataset of one ``h5py.File`` per process indexed ``[trajectory, step]``, with the same
block mean and no checks.
``trajectory`` (only with ``--methods``) reads each snapshot as ``reader[trajectory][step]``, the
datamodule's path before ``NavierStokesTrajectories.snapshot``. Each (loader, workers) run is a
fresh subprocess: ``main`` is its peak RSS (``VmHWM``; ``ru_maxrss`` would carry the generating
parent's over ``exec``), ``start`` its RSS once the loader is built (imports included), ``worker``
the largest DataLoader worker (``RUSAGE_CHILDREN``); samples/s is the best of ``--repeats``
epochs over the same samples, and both loaders must give the same sum of ``lr**2``. The file is deleted at the end unless
``--keep``.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/navier_stokes_loading.py --size-gb 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lightning_climate.layers.constraints import block_mean

DT = 1e-3


class H5pyReader(Dataset):
    """The peer: ``h5py.File(path)["vorticity"]`` once per process, indexed ``[trajectory, step]``."""

    def __init__(self, path: Path, factor: int) -> None:
        import h5py

        self.path, self.factor = path, factor
        with h5py.File(path, "r") as file:
            self.trajectories, self.steps = file["vorticity"].shape[:2]
        self._vorticity: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return self.trajectories * self.steps

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import h5py

        if self._pid != os.getpid():  # a forked worker opens its own handle
            self._vorticity, self._pid = h5py.File(self.path, "r")["vorticity"], os.getpid()
        field = self._vorticity[index // self.steps, index % self.steps]
        hr = torch.from_numpy(field)[None]
        return {"lr": block_mean(hr, self.factor), "hr": hr, "index": torch.tensor(index)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_vorticity": None, "_pid": -1}


class TrajectoryReader(Dataset):
    """Our reader as the datamodule used it before ``snapshot``: the whole trajectory per sample."""

    def __init__(self, path: Path, factor: int) -> None:
        from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories

        self.reader, self.factor = NavierStokesTrajectories(path), factor

    def __len__(self) -> int:
        return len(self.reader) * self.reader.num_steps

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        steps = self.reader.num_steps
        hr = self.reader[index // steps][index % steps][None]
        return {"lr": block_mean(hr, self.factor), "hr": hr, "index": torch.tensor(index)}


def _status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 1024.0


def _dataset(method: str, path: Path, factor: int) -> Dataset:
    if method == "h5py":
        return H5pyReader(path, factor)
    if method == "trajectory":
        return TrajectoryReader(path, factor)
    from lightning_climate.datamodules import NavierStokesDataModule
    from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories

    resolution = NavierStokesTrajectories(path).resolution
    data = NavierStokesDataModule(
        root=path, resolution=resolution, factor=factor, test_factors=(1,),
        val_fraction=0, test_fraction=0,
    )  # fmt: skip
    data.setup("fit")
    return data.train_dataset


def child(args: argparse.Namespace) -> None:
    if args.method != "h5py":  # imports are not setup time (the peer never imports Lightning)
        import lightning_climate.datamodules  # noqa: F401
    start = time.perf_counter()
    dataset = _dataset(args.method, args.path, args.factor)
    setup = time.perf_counter() - start
    sampler = RandomSampler(
        dataset, num_samples=args.samples, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, sampler=sampler
    )
    start_mb = _status_mb("VmRSS:")
    epoch = float("inf")
    for _ in range(args.repeats):  # the same samples each time; the best epoch is kept
        t0 = time.perf_counter()
        checksum = 0.0
        for batch in loader:
            checksum += float(batch["lr"].double().square().sum())
        epoch = min(epoch, time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "samples": len(dataset),
                "setup_s": setup,
                "epoch_s": epoch,
                "start_mb": start_mb,
                "main_mb": _status_mb("VmHWM:"),
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
                "checksum": checksum,
            }
        )
    )


def _generate(args: argparse.Namespace) -> Path:
    from lightning_climate.datasets.navier_stokes_generate import generate_navier_stokes

    record = 4 * (args.steps + 1) * args.resolution**2  # vorticity records and w0
    count = max(1, round(args.size_gb * 1e9 / record))
    path = args.root / f"ns_bench_res{args.resolution}_steps{args.steps}_n{count}.h5"
    if not path.exists():
        generate_navier_stokes(
            path, count, resolution=args.resolution, t_final=args.steps * DT,
            record_steps=args.steps, dt=DT, batch_size=32,
        )  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/navier_stokes_bench"))
    parser.add_argument("--size-gb", type=float, default=0.5, help="size of the generated file")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="records per trajectory")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=3000, help="random snapshots read per run")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per run, best kept")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--methods", nargs="+", default=["ours", "h5py"], choices=["ours", "h5py", "trajectory"]
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.workers = args.workers[0]
        child(args)
        return
    path = _generate(args)
    data_mb = path.stat().st_size / 2**20
    rows = {}
    try:
        for workers in args.workers:
            for method in args.methods:
                cmd = [sys.executable, __file__, "--method", method, "--path", str(path)]
                cmd += ["--workers", str(workers), "--factor", str(args.factor)]
                cmd += ["--batch-size", str(args.batch_size), "--samples", str(args.samples)]
                cmd += ["--repeats", str(args.repeats)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows[(method, workers)] = json.loads(out.strip().splitlines()[-1])
                print(method, workers, rows[(method, workers)], flush=True)
    finally:
        if not args.keep:
            path.unlink()
    n = args.samples
    total = rows[(args.methods[0], args.workers[0])]["samples"]
    print(
        f"{n} random of {total} snapshots of {args.resolution} x {args.resolution}, "
        f"{data_mb:.0f} MB on disk, batch {args.batch_size}, best of {args.repeats} epochs"
    )
    print("loader      workers  setup s  samples/s  start MB  main peak MB  worker peak MB")
    for (method, workers), r in rows.items():
        worker = f"{r['worker_mb']:15.0f}" if workers else f"{'-':>15s}"
        print(
            f"{method:11s} {workers:7d} {r['setup_s']:8.2f} {n / r['epoch_s']:10.1f} "
            f"{r['start_mb']:9.0f} {r['main_mb']:13.0f} {worker}"
        )
    for workers in args.workers:
        peer = rows[("h5py", workers)]
        for method in (m for m in args.methods if m != "h5py"):
            ours = rows[(method, workers)]
            agree = abs(ours["checksum"] - peer["checksum"]) <= 1e-9 * abs(peer["checksum"])
            assert agree, f"{method} and h5py disagree: {ours['checksum']} vs {peer['checksum']}"
            peak = max(ours["main_mb"], ours["worker_mb"] if workers else 0.0)
            print(
                f"workers={workers}: {method}/h5py samples/s {peer['epoch_s'] / ours['epoch_s']:.2f}x, "
                f"peak memory main {ours['main_mb'] / peer['main_mb']:.2f}x (growth while reading "
                f"{ours['main_mb'] - ours['start_mb']:.0f} vs {peer['main_mb'] - peer['start_mb']:.0f} "
                f"MB); data on disk / {method} peak RSS {data_mb / peak:.1f}x"
            )


if __name__ == "__main__":
    main()
