"""Write the tiny Navier-Stokes fixtures of this folder (seeded, idempotent; run from the repo root).

    PYTHONPATH=. python tests/data/navier_stokes/data.py

* ``ns_tiny.h5``: :func:`generate_navier_stokes` output (2 trajectories, 16^2, 2 records);
* ``ns_tiny_v73.mat``: the same data in the FNO MATLAB v7.3 layout (HDF5 after a 512-byte MATLAB
  header, axes reversed: ``u`` (N, H, W, T) is stored as (T, W, H, N)), keys ``a``, ``u``, ``t``;
* ``ns_tiny_v5.mat``: the same data as an older MATLAB file written with ``scipy.io.savemat``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.datasets.navier_stokes_generate import generate_navier_stokes

HERE = Path(__file__).parent
PARAMS = {"num_trajectories": 2, "resolution": 16, "viscosity": 1e-3, "t_final": 1.0}
PARAMS |= {"record_steps": 2, "dt": 0.05, "seed": 3, "progress": False}


def main() -> None:
    for name in ("ns_tiny.h5", "ns_tiny_v73.mat", "ns_tiny_v5.mat"):
        (HERE / name).unlink(missing_ok=True)
    data = NavierStokesTrajectories(generate_navier_stokes(HERE / "ns_tiny.h5", **PARAMS))
    u = np.stack([data[i].numpy().transpose(1, 2, 0) for i in range(len(data))])  # (N, H, W, T)
    a = np.stack([data.initial_condition(i).numpy() for i in range(len(data))])  # (N, H, W)
    t = data.times.numpy()[None]  # (1, T) as MATLAB stores row vectors
    with h5py.File(HERE / "ns_tiny_v73.mat", "w", userblock_size=512) as file:
        for key, value in {"a": a, "u": u, "t": t}.items():
            file[key] = value.transpose()
    with open(HERE / "ns_tiny_v73.mat", "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file, written by tests/data/navier_stokes/data.py")
    scipy.io.savemat(HERE / "ns_tiny_v5.mat", {"a": a, "u": u, "t": t})


if __name__ == "__main__":
    main()
