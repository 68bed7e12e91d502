"""Throughput of :func:`solve_vorticity` against a NumPy implementation of the same recipe.

Both solvers run Li et al.'s scheme (rfft2, Crank-Nicolson diffusion, explicit advection and
forcing, 2/3 dealiasing) in float64 on the same initial conditions in this process. The script
first checks that they agree to round-off, then times a fixed number of steps and converts it to
trajectories per second for a full trajectory of ``--t-final / --dt`` steps (default: the main
job's T = 10 at dt = 1e-3).

Columns: ``torch 1 thr`` and ``numpy`` are CPU seconds of one thread (``time.process_time``, which
is robust to other processes sharing the machine; numpy.fft is single-threaded); ``torch N thr``
is wall time with torch's default intra-op threads. Ratios are torch over numpy.

    OMP_NUM_THREADS=... python benchmarks/navier_stokes_solver.py
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from lightning_climate.datasets.navier_stokes_solver import (
    gaussian_random_field,
    li_forcing,
    solve_vorticity,
)


def numpy_solve(
    w0: np.ndarray, forcing: np.ndarray, nu: float, dt: float, steps: int
) -> np.ndarray:
    """The same recipe with numpy.fft: returns the vorticity after ``steps`` steps."""
    n = w0.shape[-1]
    kx = np.fft.fftfreq(n, 1.0 / n).round()[:, None]
    ky = np.arange(n // 2 + 1, dtype=np.float64)[None, :]
    lap = 4.0 * math.pi**2 * (kx**2 + ky**2)
    inv_lap = np.divide(1.0, lap, out=np.zeros_like(lap), where=lap > 0)
    ddx = np.where(np.abs(kx) == n // 2, 0.0, 2j * math.pi * kx) * np.ones_like(ky)
    ddy = np.where(ky == n // 2, 0.0, 2j * math.pi * ky) * np.ones_like(kx)
    dealias = (np.abs(kx) <= n / 3) & (ky <= n / 3)
    half = 0.5 * dt * nu * lap
    keep, gain = (1.0 - half) / (1.0 + half), dt * dealias / (1.0 + half)
    f_step = dt * np.fft.rfft2(forcing) / (1.0 + half)
    w_h = np.fft.rfft2(w0)
    for _ in range(steps):
        psi_h = w_h * inv_lap
        u = np.fft.irfft2(ddy * psi_h, s=(n, n))
        v = np.fft.irfft2(-ddx * psi_h, s=(n, n))
        w_x = np.fft.irfft2(ddx * w_h, s=(n, n))
        w_y = np.fft.irfft2(ddy * w_h, s=(n, n))
        w_h = keep * w_h - gain * np.fft.rfft2(u * w_x + v * w_y) + f_step
    return np.fft.irfft2(w_h, s=(n, n))


def best_of(
    repeats: int, clock: Callable[[], float], fn: Callable[..., object], *args: object
) -> float:
    """Fastest of ``repeats`` calls of ``fn(*args)`` measured with ``clock``."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn(*args)
        times.append(clock() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 64, 64, 256, 256, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 50, 1, 4, 16])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 100, 60, 20, 10, 8])
    parser.add_argument("--viscosity", type=float, default=1e-3)
    parser.add_argument("--dt", type=float, default=1e-3)
    parser.add_argument("--t-final", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    per_trajectory = round(args.t_final / args.dt)
    print(
        f"torch {torch.__version__} vs numpy {np.__version__}: trajectories/s for {per_trajectory} "
        f"steps (T={args.t_final:g}, dt={args.dt:g}), float64"
    )
    header = f"{'grid':>6} {'batch':>5} {'numpy':>9} {'torch 1 thr':>12} {'ratio':>6}"
    print(f"{header} {f'torch {threads} thr':>12} {'ratio':>6} {'max diff':>9}")
    for n, batch, steps in zip(args.resolutions, args.batch, args.steps, strict=True):
        w0 = gaussian_random_field(batch, n, generator=torch.Generator().manual_seed(0))
        forcing = li_forcing(n)
        t_run = steps * args.dt
        solve_args = (w0, forcing, args.viscosity, t_run, args.dt, 1)
        numpy_args = (w0.numpy(), forcing.numpy(), args.viscosity, args.dt, steps)
        ours = solve_vorticity(*solve_args)[:, 0].numpy()
        reference = numpy_solve(*numpy_args)
        diff = np.abs(ours - reference).max() / np.abs(reference).max()
        assert diff < 1e-10, f"torch and numpy solvers disagree: {diff:.2e}"
        t_numpy = best_of(args.repeats, time.process_time, numpy_solve, *numpy_args)
        torch.set_num_threads(1)
        t_one = best_of(args.repeats, time.process_time, solve_vorticity, *solve_args)
        torch.set_num_threads(threads)
        t_many = best_of(args.repeats, time.perf_counter, solve_vorticity, *solve_args)
        rates = [batch * steps / (t * per_trajectory) for t in (t_numpy, t_one, t_many)]
        print(
            f"{n:>4}^2 {batch:>5} {rates[0]:>9.3f} {rates[1]:>12.3f} {rates[1] / rates[0]:>5.2f}x "
            f"{rates[2]:>12.3f} {rates[2] / rates[0]:>5.2f}x {diff:>9.1e}"
        )


if __name__ == "__main__":
    main()
