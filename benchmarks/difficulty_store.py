"""Cost of DifficultyScores' record store, and of the analysis, at CIFAR and ImageNet scale.

1. Append time of record 200 over record 1 with 50,000 examples x 9 scores (target <= 1.2), for
   the Zarr :class:`~lightning_climate.io.RecordStore` and for its predecessor as the peer: a
   NetCDF-4 file grown crash-safely by copying it beside itself, appending one record with the
   netCDF4 library and renaming the copy into place (its cost grows with the file).
2. Synthetic ImageNet scale, 1,281,167 examples x 100 records of the 5 default scores, 2 runs:
   total write time and store size per run, then the wall time and peak RSS of the analysis CLI
   (``python -m lightning_climate.analysis.difficulty``) over both stores, next to what loading
   the two stores whole would take.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/difficulty_store.py              # both parts
    OMP_NUM_THREADS=1 python benchmarks/difficulty_store.py --part append --records 200
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lightning_climate.callbacks import DifficultyScores
from lightning_climate.callbacks.difficulty import DIFFICULTY_SCORES
from lightning_climate.io import RecordStore
from lightning_climate.utils import atomic_path, lazy_import

SCORES_9 = DIFFICULTY_SCORES[:9]  # the one-pass scores, GraNd and VoG
SCORES_5 = DifficultyScores().scores  # the callback's default, cheap scores


def synthetic_record(
    rng: np.random.Generator, n: int, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Score-like values: continuous scores in float64, accuracy as 0/1."""
    return {
        name: (rng.random(n) < 0.7).astype(np.float64)
        if name == "accuracy"
        else rng.exponential(size=n)
        for name in names
    }


class NetCDFCopyAppend:
    """The peer: the NetCDF file DifficultyScores wrote before, grown by copy + append + rename."""

    def __init__(self, path: Path, index: np.ndarray) -> None:
        self.path = path
        self.netcdf4 = lazy_import("netCDF4")
        with atomic_path(path) as tmp, self.netcdf4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.createDimension("epoch", None)
            ds.createDimension("index", len(index))
            ds.createVariable("epoch", "i8", ("epoch",))
            ds.createVariable("index", "i8", ("index",))[:] = index

    def append(self, epoch: int, values: dict[str, np.ndarray]) -> None:
        with atomic_path(self.path) as tmp:
            shutil.copyfile(self.path, tmp)
            with self.netcdf4.Dataset(tmp, "a") as ds:
                row = len(ds.dimensions["epoch"])
                ds["epoch"][row] = epoch
                for name, value in values.items():
                    if name not in ds.variables:
                        ds.createVariable(name, "f8", ("epoch", "index"), fill_value=np.nan)
                    ds[name][row, :] = value


def append_ratio(root: Path, examples: int, records: int) -> None:
    rng = np.random.default_rng(0)
    index = np.arange(examples)
    record = synthetic_record(rng, examples, SCORES_9)
    store = RecordStore(root / "scores.zarr")
    store.create(index, {"architecture": "synthetic"})
    peer = NetCDFCopyAppend(root / "scores.nc", index)
    times: dict[str, list[float]] = {"zarr": [], "netcdf_copy": []}
    for epoch in range(records):  # alternate, so both see the same load on the machine
        start = time.perf_counter()
        store.append(epoch, epoch, record, {"architecture": "synthetic"})
        times["zarr"].append(time.perf_counter() - start)
        start = time.perf_counter()
        peer.append(epoch, record)
        times["netcdf_copy"].append(time.perf_counter() - start)
    print(f"\n## Append cost: {examples} examples x {len(SCORES_9)} scores, {records} records\n")
    print(
        f"| store | record 1 (ms) | record {records} (ms) | ratio | median first 10 (ms) | "
        "median last 10 (ms) | ratio | size (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sizes = {"zarr": _size(store.path), "netcdf_copy": _size(peer.path)}
    for name, t in times.items():
        first, last = np.median(t[:10]), np.median(t[-10:])
        print(
            f"| {name} | {t[0] * 1e3:.1f} | {t[-1] * 1e3:.1f} | {t[-1] / t[0]:.2f} | "
            f"{first * 1e3:.1f} | {last * 1e3:.1f} | **{last / first:.2f}** | {sizes[name] / 1e6:.0f} |"
        )
    print(
        f"total append time: zarr {sum(times['zarr']):.1f} s, netcdf_copy {sum(times['netcdf_copy']):.1f} s"
    )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def imagenet_scale(root: Path, examples: int, records: int, runs: int, permutations: int) -> None:
    paths = []
    print(
        f"\n## Synthetic ImageNet scale: {examples} examples x {records} records x {len(SCORES_5)} scores\n"
    )
    print("| run | total write time (s) | per record (ms) | store size (GB) | raw float64 (GB) |")
    print("|---|---|---|---|---|")
    for run in range(runs):
        rng = np.random.default_rng(run)
        path = root / f"run{run}.zarr"
        store = RecordStore(path)
        attrs = {"architecture": f"arch{run % 2}", "seed": run}
        store.create(np.arange(examples), attrs)
        base = synthetic_record(rng, examples, SCORES_5)
        elapsed = 0.0
        for epoch in range(records):
            record = {
                n: v + 0.01 * epoch for n, v in base.items()
            }  # cheap, record-dependent values
            start = time.perf_counter()
            store.append(epoch, epoch * 5005, record, attrs)
            elapsed += time.perf_counter() - start
        raw = examples * records * len(SCORES_5) * 8
        print(
            f"| {run} | {elapsed:.1f} | {elapsed / records * 1e3:.0f} | {_size(path) / 1e9:.2f} | {raw / 1e9:.2f} |"
        )
        paths.append(str(path))
    command = [
        sys.executable,
        "-m",
        "lightning_climate.analysis.difficulty",
        *paths,
        "--out",
        str(root / "analysis"),
        "--permutations",
        str(permutations),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
    whole = runs * examples * records * len(SCORES_5) * 8 / 2**20
    print(
        f"\nanalysis CLI over {runs} runs ({permutations} permutations): {elapsed:.1f} s, peak RSS "
        f"{peak:.0f} MiB; loading the stores whole would take {whole:.0f} MiB of float64 alone"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["append", "imagenet", "both"], default="both")
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--imagenet-examples", type=int, default=1_281_167)
    parser.add_argument("--imagenet-records", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--root", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as root:
        if args.part in ("append", "both"):
            append_ratio(Path(root), args.examples, args.records)
        if args.part in ("imagenet", "both"):
            imagenet_scale(
                Path(root),
                args.imagenet_examples,
                args.imagenet_records,
                args.runs,
                args.permutations,
            )


if __name__ == "__main__":
    main()
