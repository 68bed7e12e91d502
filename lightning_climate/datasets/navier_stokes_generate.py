"""Writer of Navier-Stokes vorticity data sets (HDF5), solved with Li et al.'s recipe.

File layout written by :func:`generate_navier_stokes` (HDF5):

* ``vorticity``: float32 ``(num_trajectories, record_steps, resolution, resolution)``, the states at
  ``t = t_final / record_steps, 2 t_final / record_steps, ..., t_final``; as in Li's files, the
  first record is not ``t = 0``;
* ``w0``: float32 ``(num_trajectories, resolution, resolution)``, the initial conditions;
* ``t``: float64 ``(record_steps,)``, the recorded times;
* every dataset is chunked per trajectory and fletcher32-checksummed, so flipped bytes are an
  error on read, never silently wrong values;
* attributes: every generator argument, the seed and the package version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lightning_climate.datasets.integrity import require_free_space
from lightning_climate.datasets.navier_stokes_solver import (
    _num_steps,
    gaussian_random_field,
    li_forcing,
    solve_vorticity,
)
from lightning_climate.utils import atomic_path, lazy_import

__all__ = ["estimated_size", "generate_navier_stokes", "trajectory_generator"]

#: HDF5 metadata and attributes of one file, with room to spare.
_METADATA_BYTES = 2**20


def estimated_size(num_trajectories: int, resolution: int, record_steps: int) -> int:
    """Upper estimate (bytes) of a :func:`generate_navier_stokes` file: float32 fields + metadata."""
    fields = 4 * num_trajectories * (record_steps + 1) * resolution**2
    checksums = 4 * 2 * num_trajectories  # one fletcher32 word per chunk
    return fields + 8 * record_steps + checksums + _METADATA_BYTES


def trajectory_generator(seed: int, index: int) -> torch.Generator:
    """Random generator of trajectory ``index`` of a set generated with ``seed``.

    Each trajectory has its own stream, so a file's content does not depend on the batch size of
    the generation, and trajectory ``i`` can be recomputed alone.
    """
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def generate_navier_stokes(
    path: str | os.PathLike[str],
    num_trajectories: int,
    resolution: int = 64,
    viscosity: float = 1e-3,
    t_final: float = 10.0,
    record_steps: int = 10,
    dt: float = 1e-3,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """Solve ``num_trajectories`` trajectories of Li et al.'s recipe and write them to one HDF5 file.

    Initial conditions are Gaussian random fields (alpha = 2.5, tau = 7) drawn from
    :func:`trajectory_generator` ``(seed, i)``, the forcing is :func:`li_forcing`, and the solver runs
    in float64; the file stores float32. The file is written atomically: an interrupted run leaves
    no file at ``path``, and it is refused before any solving if the disk cannot hold it
    (:func:`estimated_size`). The layout is described in this module's docstring.

    Args:
        path: output file (conventionally ``*.h5``); parent folders are created.
        num_trajectories: number of trajectories.
        resolution: grid points per side.
        viscosity: kinematic viscosity nu.
        t_final: final time.
        record_steps: records per trajectory, equally spaced, the first at ``t_final/record_steps``.
        dt: solver time step.
        seed: seed of the initial conditions.
        batch_size: trajectories solved together. Speed/memory only: each trajectory has its own
            seed, so other batch sizes give the same data up to float32 rounding.
        progress: show a tqdm progress bar over trajectories.

    Returns:
        The path of the written file.
    """
    h5py = lazy_import("h5py")
    from lightning_climate import __version__

    if num_trajectories < 1 or batch_size < 1:
        raise ValueError(
            f"num_trajectories and batch_size must be >= 1, got {num_trajectories}, {batch_size}."
        )
    if resolution < 4:
        raise ValueError(f"resolution must be >= 4, got {resolution}.")
    _num_steps(t_final, dt, record_steps)
    forcing = li_forcing(resolution)
    times = t_final * np.arange(1, record_steps + 1) / record_steps
    path = Path(path)
    require_free_space(
        path,
        estimated_size(num_trajectories, resolution, record_steps),
        "write elsewhere (`path`, or the datamodule's `data_dir`), or generate fewer "
        "trajectories (`num_trajectories`) or a smaller grid (`resolution`).",
    )
    attrs = {
        "num_trajectories": num_trajectories,
        "resolution": resolution,
        "viscosity": viscosity,
        "t_final": t_final,
        "record_steps": record_steps,
        "dt": dt,
        "seed": seed,
        "alpha": 2.5,
        "tau": 7.0,
        "forcing": "0.1*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))",
        "solver": "pseudo-spectral, Crank-Nicolson diffusion, explicit advection, 2/3 dealiasing",
        "generator": "lightning_climate.datasets.navier_stokes_generate.generate_navier_stokes",
        "lightning_climate_version": __version__,
    }
    shape = (num_trajectories, record_steps, resolution, resolution)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        file.attrs.update(attrs)
        # fletcher32: every chunk is checksummed, so damaged bytes fail on read
        vorticity = file.create_dataset(
            "vorticity", shape=shape, dtype="f4", chunks=(1, *shape[1:]), fletcher32=True
        )
        w0_shape = (num_trajectories, resolution, resolution)
        w0_set = file.create_dataset(
            "w0", shape=w0_shape, dtype="f4", chunks=(1, *w0_shape[1:]), fletcher32=True
        )
        file.create_dataset("t", data=times, fletcher32=True)
        with tqdm(
            total=num_trajectories, desc=f"Navier-Stokes {path.name}", disable=not progress
        ) as bar:
            for start in range(0, num_trajectories, batch_size):
                stop = min(start + batch_size, num_trajectories)
                w0 = torch.cat(
                    [
                        gaussian_random_field(
                            1, resolution, generator=trajectory_generator(seed, i)
                        )
                        for i in range(start, stop)
                    ]
                )
                solution = solve_vorticity(w0, forcing, viscosity, t_final, dt, record_steps)
                vorticity[start:stop] = solution.to(torch.float32).numpy()
                w0_set[start:stop] = w0.to(torch.float32).numpy()
                bar.update(stop - start)
    return path
