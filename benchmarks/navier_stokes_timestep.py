"""Largest solver time step whose trajectories stay within a relative L2 error of a fine reference.

Solves the same initial conditions (Li et al.'s recipe) at several ``dt`` and compares every record
with a reference run at ``--reference-dt`` (default 1e-4, Li's step). Prints one row per ``dt``: the
worst relative L2 error over trajectories and records, and the seconds per trajectory.

    OMP_NUM_THREADS=1 python benchmarks/navier_stokes_timestep.py --viscosity 1e-3 --t-final 10
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_climate.datasets.navier_stokes_generate import trajectory_generator
from lightning_climate.datasets.navier_stokes_solver import (
    gaussian_random_field,
    li_forcing,
    solve_vorticity,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--viscosity", type=float, default=1e-3)
    parser.add_argument("--t-final", type=float, default=10.0)
    parser.add_argument("--record-steps", type=int, default=10)
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--reference-dt", type=float, default=1e-4)
    parser.add_argument(
        "--dts", type=float, nargs="+", default=[1e-3, 2e-3, 2.5e-3, 5e-3, 1e-2, 2e-2]
    )
    args = parser.parse_args()

    n = args.resolution
    w0 = torch.cat(
        [
            gaussian_random_field(1, n, generator=trajectory_generator(0, i))
            for i in range(args.trajectories)
        ]
    )
    forcing = li_forcing(n)

    def run(dt: float) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = solve_vorticity(w0, forcing, args.viscosity, args.t_final, dt, args.record_steps)
        return out, (time.perf_counter() - start) / args.trajectories

    reference, ref_seconds = run(args.reference_dt)
    print(
        f"{n}x{n}, nu={args.viscosity:g}, T={args.t_final:g}, {args.record_steps} records, "
        f"{args.trajectories} trajectories, reference dt={args.reference_dt:g} "
        f"({ref_seconds:.2f} s/trajectory)"
    )
    print(f"{'dt':>8} {'max rel L2':>12} {'rel L2 at T':>12} {'s/trajectory':>13}")
    for dt in args.dts:
        out, seconds = run(dt)
        err = (out - reference).flatten(2).norm(dim=-1) / reference.flatten(2).norm(dim=-1)
        print(f"{dt:8.2g} {err.max().item():12.2e} {err[:, -1].max().item():12.2e} {seconds:13.3f}")


if __name__ == "__main__":
    main()
