"""Read-time cost of the integrity checks: fletcher32 checksums and ClimateSet's plausibility ranges.

Each reader runs over the same data twice in one process, once from the checksummed files our
generators write and once from copies without the filter (the peer: the files as written before),
and ClimateSet also with ``check_values=False``. Files are read once before timing so every run
reads from the page cache; the ratio is checked / unchecked time (1.00 = free).

    python benchmarks/integrity_overhead.py --root /tmp/integrity_bench
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import netCDF4

from lightning_climate.datasets import ClimateSet, generate_climateset
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.datasets.navier_stokes_generate import generate_navier_stokes


def best_of(repeats: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Fastest of ``repeats`` timed calls of each run, interleaved so load drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def read_all(data: ClimateSet | NavierStokesTrajectories) -> Callable[[], object]:
    return lambda: [data[i] for i in range(len(data))]


def strip_hdf5(source: Path, target: Path) -> None:
    """Copy of an HDF5 file with the same chunks and attributes but no fletcher32."""
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        dst.attrs.update(src.attrs)
        for name, data in src.items():
            dst.create_dataset(name, data=data[()], chunks=data.chunks)


def strip_netcdf(root: Path, target: Path) -> None:
    """Copy of a ClimateSet tree whose NetCDF variables have no fletcher32."""
    for source in root.rglob("*.nc"):
        out = target / source.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        with netCDF4.Dataset(source) as src, netCDF4.Dataset(out, "w") as dst:
            for dim, size in src.dimensions.items():
                dst.createDimension(dim, len(size))
            for name, var in src.variables.items():
                new = dst.createVariable(name, var.dtype, var.dimensions)
                new.setncatts({k: var.getncattr(k) for k in var.ncattrs()})
                new[:] = var[:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/integrity_bench"))
    parser.add_argument("--trajectories", type=int, default=200)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ns = args.root / "ns_checksummed.h5"
    if not ns.exists():
        generate_navier_stokes(ns, args.trajectories, resolution=64, t_final=1.0, dt=0.1)
    plain = args.root / "ns_plain.h5"
    if not plain.exists():
        strip_hdf5(ns, plain)
    rows = []
    readers = {
        name: NavierStokesTrajectories(path) for name, path in (("sum", ns), ("plain", plain))
    }
    t = best_of(1 + args.repeats, {k: read_all(r) for k, r in readers.items()})  # 1: warm-up
    mb = ns.stat().st_size / 2**20
    rows.append(("Navier-Stokes, fletcher32 vs none", t["sum"], t["plain"], mb))

    tree = args.root / "climateset"
    years = range(2015, 2015 + args.years)
    generate_climateset(tree, scenarios=["ssp126", "ssp370"], years=years, progress=False)
    tree_plain = args.root / "climateset_plain"
    if not tree_plain.exists():
        strip_netcdf(tree, tree_plain)
    scen = ["ssp126", "ssp370"]
    sets = {
        "all": ClimateSet(tree, scenarios=scen, years=years),
        "checksum only": ClimateSet(tree, scenarios=scen, years=years, check_values=False),
        "none": ClimateSet(tree_plain, scenarios=scen, years=years, check_values=False),
    }
    t = best_of(1 + args.repeats, {k: read_all(d) for k, d in sets.items()})
    mb = sum(p.stat().st_size for p in tree.rglob("*.nc")) / 2**20
    rows.append(("ClimateSet, checksum + plausibility vs none", t["all"], t["none"], mb))
    rows.append(("ClimateSet, checksum only vs none", t["checksum only"], t["none"], mb))
    rows.append(
        ("ClimateSet, plausibility only (all vs checksum)", t["all"], t["checksum only"], mb)
    )

    print(f"{'reader':50s} {'checked s':>10s} {'peer s':>8s} {'ratio':>6s} {'MiB':>6s}")
    for name, checked, peer, size in rows:
        print(f"{name:50s} {checked:10.3f} {peer:8.3f} {checked / peer:6.2f} {size:6.1f}")


if __name__ == "__main__":
    main()
