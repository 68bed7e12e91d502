"""2-D Navier-Stokes vorticity on the periodic unit square: solver, data generator and file reader.

The recipe is that of Li et al. (FNO): a Gaussian random field initial condition
``N(0, tau^(2alpha-2) (-Lap + tau^2 I)^(-alpha))`` with alpha = 2.5, tau = 7, the forcing
``0.1 (sin 2pi(x+y) + cos 2pi(x+y))``, and a pseudo-spectral solver with Crank-Nicolson diffusion,
explicit (forward Euler) advection and forcing and 2/3-rule dealiasing. The generator writes one
HDF5 file per set; the reader also opens the published FNO ``.mat`` files.

File layout written by :func:`generate_navier_stokes` (HDF5):

* ``vorticity``: float32 ``(num_trajectories, record_steps, resolution, resolution)``, the states at
  ``t = t_final / record_steps, 2 t_final / record_steps, ..., t_final``; as in Li's files, the
  first record is not ``t = 0``;
* ``w0``: float32 ``(num_trajectories, resolution, resolution)``, the initial conditions;
* ``t``: float64 ``(record_steps,)``, the recorded times;
* attributes: every generator argument, the seed and the package version.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lightning_climate.utils import atomic_path, lazy_import

__all__ = [
    "NavierStokesTrajectories",
    "gaussian_random_field",
    "generate_navier_stokes",
    "li_forcing",
    "solve_vorticity",
    "trajectory_generator",
]

_REGENERATE = (
    "generate it with `lightning_climate.datasets.navier_stokes.generate_navier_stokes(path, ...)` "
    "or the datamodule's `prepare_data()`"
)


def _integer_wavenumbers(size: int, dtype: torch.dtype) -> Tensor:
    """Integer wavenumbers in FFT order: ``0, 1, ..., ceil(size/2)-1, -floor(size/2), ..., -1``."""
    return torch.cat([torch.arange(0, (size + 1) // 2), torch.arange(-(size // 2), 0)]).to(dtype)


def gaussian_random_field(
    num: int,
    size: int,
    alpha: float = 2.5,
    tau: float = 7.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Draw periodic Gaussian random fields ``N(0, sigma^2 (-Lap + tau^2 I)^(-alpha))`` on [0, 1)^2.

    Uses Li et al.'s scaling: ``sigma = tau^((2 alpha - d) / 2)`` with ``d = 2``, and Fourier
    coefficients ``s^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2) xi_k`` with complex standard
    normal ``xi_k``; the field is the real part of their inverse FFT. The mean (k = 0) mode is zero,
    so every field has zero mean. The pointwise variance is
    ``sigma^2 sum_{k != 0} (4 pi^2 |k|^2 + tau^2)^(-alpha)`` (0.0343 for alpha = 2.5, tau = 7).

    Args:
        num: number of fields.
        size: grid points per side ``s``; the grid is ``x_i = i / s``.
        alpha: smoothness exponent alpha (> 1 for a field with finite variance in 2-D).
        tau: inverse length scale tau (> 0).
        generator: random generator, for reproducible draws.
        dtype: real floating dtype of the result.

    Returns:
        Tensor of shape ``(num, size, size)``.
    """
    if num < 1 or size < 2:
        raise ValueError(f"num must be >= 1 and size >= 2, got num={num}, size={size}.")
    if alpha <= 1.0 or tau <= 0.0:
        raise ValueError(
            f"alpha must be > 1 (finite variance in 2-D) and tau > 0, got alpha={alpha}, tau={tau}."
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a real floating dtype, got {dtype}.")
    k = _integer_wavenumbers(size, torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sigma = tau ** (0.5 * (2.0 * alpha - 2.0))
    sqrt_eig = size**2 * math.sqrt(2.0) * sigma * (4.0 * math.pi**2 * k2 + tau**2) ** (-alpha / 2.0)
    sqrt_eig[0, 0] = 0.0
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    xi = torch.randn(num, size, size, dtype=complex_dtype, generator=generator)
    return torch.fft.ifft2(sqrt_eig.to(complex_dtype) * xi).real.to(dtype)


def li_forcing(size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Li et al.'s forcing ``0.1 (sin 2pi(x+y) + cos 2pi(x+y))`` on the grid ``x_i = i / size``.

    It has zero mean and lives on the Fourier shell ``|k|^2 = 2``, so ``f / (8pi^2nu)`` is an exact
    steady state of the forced equation.

    Returns:
        Tensor of shape ``(size, size)``, indexed ``[x, y]``.
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}.")
    grid = torch.arange(size, dtype=torch.float64) / size
    phase = 2.0 * math.pi * (grid[:, None] + grid[None, :])
    return (0.1 * (torch.sin(phase) + torch.cos(phase))).to(dtype)


def _num_steps(t_final: float, dt: float, record_steps: int) -> int:
    """Number of solver steps, checked to be an integer multiple of ``record_steps``."""
    if not (math.isfinite(t_final) and t_final > 0 and math.isfinite(dt) and dt > 0):
        raise ValueError(f"t_final and dt must be positive, got t_final={t_final}, dt={dt}.")
    if record_steps < 1:
        raise ValueError(f"record_steps must be >= 1, got {record_steps}.")
    steps = round(t_final / dt)
    if steps < 1 or abs(steps * dt - t_final) > 1e-9 * t_final:
        raise ValueError(
            f"t_final={t_final} is not an integer multiple of dt={dt}; choose dt = t_final / n."
        )
    if steps % record_steps:
        raise ValueError(
            f"t_final/dt = {steps} steps is not divisible by record_steps={record_steps}; choose dt "
            f"so that t_final/(dt * record_steps) is an integer."
        )
    return steps


@torch.no_grad()
def solve_vorticity(
    w0: Tensor,
    forcing: Tensor | None,
    viscosity: float,
    t_final: float,
    dt: float,
    record_steps: int,
) -> Tensor:
    """Solve ``d_t w + u . grad w = nu Lap w + f`` on the periodic unit square, batched, spectrally.

    Velocity from the stream function ``-Lap psi = w``, ``u = (d_y psi, -d_x psi)``. Each step treats
    diffusion with Crank-Nicolson and advection and forcing with forward Euler; the advection term
    is dealiased by the 2/3 rule (``|k_x|, |k_y| <= N/3``). The mean vorticity is conserved exactly.
    Runs without autograd, in the dtype and on the device of ``w0`` (use float64 for data).

    Args:
        w0: initial vorticity ``(B, N, N)`` indexed ``[batch, x, y]`` on the grid ``x_i = i/N``.
        forcing: ``(N, N)`` or ``(B, N, N)``; ``None`` means no forcing.
        viscosity: kinematic viscosity nu (>= 0).
        t_final: final time; must be an integer multiple of ``dt * record_steps``.
        dt: time step.
        record_steps: number of equally spaced records; the first is at ``t_final / record_steps``.

    Returns:
        Tensor ``(B, record_steps, N, N)``: the vorticity at ``t_final * (r + 1) / record_steps``.

    Raises:
        ValueError: on bad shapes or time-step arguments.
        FloatingPointError: if the solution stops being finite (time step too large).
    """
    if w0.ndim != 3 or w0.shape[-1] != w0.shape[-2] or not w0.is_floating_point():
        raise ValueError(
            f"w0 must be a floating tensor of shape (batch, N, N), got {tuple(w0.shape)} "
            f"{w0.dtype}; add a batch dimension with w0[None] for a single field."
        )
    if not (math.isfinite(viscosity) and viscosity >= 0):
        raise ValueError(f"viscosity must be finite and >= 0, got {viscosity}.")
    steps = _num_steps(t_final, dt, record_steps)
    batch, n = w0.shape[0], w0.shape[-1]
    real, dev = w0.dtype, w0.device
    if forcing is None:
        forcing = w0.new_zeros(n, n)
    if forcing.shape not in ((n, n), (batch, n, n)):
        raise ValueError(
            f"forcing must have shape ({n}, {n}) or ({batch}, {n}, {n}) to match w0, got "
            f"{tuple(forcing.shape)}; build it with li_forcing({n}) or pass None."
        )

    kx = _integer_wavenumbers(n, real).to(dev)[:, None]  # full axis (x)
    ky = torch.arange(n // 2 + 1, dtype=real, device=dev)[None, :]  # rfft half axis (y)
    lap = 4.0 * math.pi**2 * (kx**2 + ky**2)  # symbol of -Lap
    inv_lap = torch.where(lap > 0, 1.0 / lap.clamp_min(1e-300), torch.zeros_like(lap))
    # first derivatives; the Nyquist wavenumber has no real derivative and is zeroed
    nyq_x = (kx.abs() == n / 2) if n % 2 == 0 else torch.zeros_like(kx, dtype=torch.bool)
    nyq_y = (ky == n / 2) if n % 2 == 0 else torch.zeros_like(ky, dtype=torch.bool)
    ddx = torch.where(nyq_x, 0.0, 2j * math.pi * kx)
    ddy = torch.where(nyq_y, 0.0, 2j * math.pi * ky)
    ddx, ddy = torch.broadcast_tensors(ddx, ddy)
    # u = d_y psi, v = -d_x psi, d_x w, d_y w, all from w_hat with one multiply and one inverse FFT
    ops = torch.stack([ddy * inv_lap, -ddx * inv_lap, ddx, ddy])[:, None]
    dealias = ((kx.abs() <= n / 3) & (ky <= n / 3)).to(real)
    half = 0.5 * dt * viscosity * lap
    keep = (1.0 - half) / (1.0 + half)
    gain = dt * dealias / (1.0 + half)

    f_h = torch.fft.rfft2(forcing)
    out = w0.new_empty(batch, record_steps, n, n)
    # Independent trajectories are solved in chunks whose spectral work arrays (4 complex fields
    # each) stay within ~1 MiB: torch's CPU FFTs slow down 2-3x per trajectory once the batch
    # leaves the cache (measured at 64^2: 0.09 ms per trajectory-step at 4, 0.24 ms at 16).
    chunk = max(1, _CHUNK_BYTES // (4 * n * (n // 2 + 1) * ops.element_size()))
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        f_chunk = f_h if f_h.ndim == 2 else f_h[start:stop]
        out[start:stop] = _integrate(
            w0[start:stop], dt * f_chunk / (1.0 + half), ops, keep, gain, steps, record_steps, dt
        )
    return out


_CHUNK_BYTES = 2**20


def _integrate(
    w0: Tensor,
    f_step: Tensor,
    ops: Tensor,
    keep: Tensor,
    gain: Tensor,
    steps: int,
    record_steps: int,
    dt: float,
) -> Tensor:
    """Time loop of :func:`solve_vorticity` for one chunk of trajectories."""
    n = w0.shape[-1]
    w_h = torch.fft.rfft2(w0)
    out = w0.new_empty(w0.shape[0], record_steps, n, n)
    per_record = steps // record_steps
    for step in range(1, steps + 1):
        fields = torch.fft.irfft2(ops * w_h, s=(n, n))
        advection = fields[0] * fields[2] + fields[1] * fields[3]
        w_h = keep * w_h - gain * torch.fft.rfft2(advection) + f_step
        if step % per_record == 0:
            w = torch.fft.irfft2(w_h, s=(n, n))
            if not torch.isfinite(w).all():
                raise FloatingPointError(
                    f"solve_vorticity diverged by t={step * dt:g} (explicit advection is unstable "
                    f"at dt={dt}); reduce dt."
                )
            out[:, step // per_record - 1] = w
    return out


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
    no file at ``path``. The layout is described in this module's docstring.

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
        "generator": "lightning_climate.datasets.navier_stokes.generate_navier_stokes",
        "lightning_climate_version": __version__,
    }
    shape = (num_trajectories, record_steps, resolution, resolution)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        file.attrs.update(attrs)
        vorticity = file.create_dataset(
            "vorticity", shape=shape, dtype="f4", chunks=(1, *shape[1:])
        )
        w0_set = file.create_dataset(
            "w0", shape=(num_trajectories, resolution, resolution), dtype="f4"
        )
        file.create_dataset("t", data=times)
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


class NavierStokesTrajectories(Dataset[Tensor]):
    """Lazy reader of Navier-Stokes vorticity trajectories.

    Opens three formats, recognised by content:

    * files of :func:`generate_navier_stokes` (HDF5, dataset ``vorticity`` ``(N, T, H, W)``);
    * the published FNO MATLAB v7.3 ``.mat`` files (HDF5 written column-major: the axis order is
      reversed on read, as Li's ``MatReader`` does, so ``u`` is ``(N, H, W, T)``);
    * older MATLAB ``.mat`` files (read whole with :func:`scipy.io.loadmat` on first access).

    In the ``.mat`` files ``a`` is the initial condition and ``u[..., 0]`` the state at the first
    record, not ``t = 0``. HDF5 files are opened once per process on first access, so the reader is
    safe with :class:`~torch.utils.data.DataLoader` worker processes.

    Args:
        path: the data file.

    Attributes:
        format: ``"hdf5"``, ``"mat-v7.3"`` or ``"mat-v5"``.
        attrs: the file's metadata (every generator parameter for our files).
        times: record times ``(num_steps,)`` from the file's ``t``, or ``None`` if it has none.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Navier-Stokes data file {self.path} does not exist; {_REGENERATE}, or point "
                f"`path` at a published FNO .mat file."
            )
        self._handle: Any = None
        self._handle_pid: int | None = None
        self._mat: dict[str, np.ndarray] | None = None
        h5py = lazy_import("h5py")
        if h5py.is_hdf5(self.path):
            self._open_hdf5(h5py)
        else:
            self._open_mat_v5()
        shape = self._shape
        if len(shape) != 4 or shape[-1] != shape[-2] or min(shape) < 1:
            raise ValueError(
                f"`{self._key}` in {self.path} must be a non-empty (trajectories, steps, N, N) field "
                f"with square N x N grids, got shape {shape} (our order); {_REGENERATE}."
            )

    def _open_hdf5(self, h5py: Any) -> None:
        try:
            with h5py.File(self.path, "r") as file:
                names = sorted(file.keys())
                if "vorticity" in file:
                    self.format, self._key = "hdf5", "vorticity"
                    self._shape = tuple(file["vorticity"].shape)
                    self.attrs = {k: _plain(v) for k, v in file.attrs.items()}
                elif "u" in file:
                    self.format, self._key = "mat-v7.3", "u"
                    if file["u"].ndim != 4:
                        raise ValueError(
                            f"`u` in {self.path} must be 4-D (trajectories, N, N, steps), got shape "
                            f"{tuple(reversed(file['u'].shape))} (MATLAB order)."
                        )
                    t, w, h, n = file["u"].shape
                    self._shape = (n, t, h, w)
                    self.attrs = {"format": "mat-v7.3"}
                else:
                    raise ValueError(
                        f"{self.path} has neither `vorticity` (generate_navier_stokes files) nor `u` "
                        f"(FNO .mat files); variables found: {names}. Point `path` at a Navier-Stokes "
                        f"file, or {_REGENERATE}."
                    )
                self.times = _times(file["t"][()] if "t" in file else None)
        except OSError as err:
            raise ValueError(_corrupt(self.path)) from err

    def _open_mat_v5(self) -> None:
        from scipy.io import loadmat, whosmat

        try:
            variables = {name: shape for name, shape, _ in whosmat(self.path)}
        except Exception as err:  # scipy raises several types on non-MATLAB bytes
            raise ValueError(_corrupt(self.path)) from err
        if "u" not in variables:
            raise ValueError(
                f"{self.path} has no `u` variable (FNO .mat files hold `a`, `u`, `t`); variables "
                f"found: {sorted(variables)}. Point `path` at a Navier-Stokes file, or {_REGENERATE}."
            )
        shape = tuple(variables["u"])
        if len(shape) != 4:
            raise ValueError(
                f"`u` in {self.path} must be 4-D (trajectories, N, N, steps), got shape {shape}."
            )
        n, h, w, t = shape
        self.format, self._key, self._shape = "mat-v5", "u", (n, t, h, w)
        self.attrs = {"format": "mat-v5"}
        self.times = _times(loadmat(self.path, variable_names=["t"]).get("t"))

    @property
    def num_trajectories(self) -> int:
        """Number of trajectories in the file."""
        return self._shape[0]

    @property
    def num_steps(self) -> int:
        """Records per trajectory."""
        return self._shape[1]

    @property
    def resolution(self) -> int:
        """Grid points per side."""
        return self._shape[-1]

    def __len__(self) -> int:
        return self.num_trajectories

    def __getitem__(self, index: int) -> Tensor:
        """Trajectory ``index`` as float32 ``(num_steps, H, W)``, checked to be finite."""
        index = self._check_index(index)
        if self.format == "mat-v5":
            field = self._mat_v5()["u"][index].transpose(2, 0, 1)  # (H, W, T) -> (T, H, W)
        elif self.format == "mat-v7.3":
            field = self._hdf5_read("u", (..., index)).transpose(0, 2, 1)  # (T, W, H) -> (T, H, W)
        else:
            field = self._hdf5_read("vorticity", index)
        out = torch.as_tensor(np.ascontiguousarray(field), dtype=torch.float32)
        if not torch.isfinite(out).all():
            raise ValueError(
                f"trajectory {index} of {self.path} contains NaN or infinite values; the file is "
                f"damaged or came from a diverged solve: {_REGENERATE} (smaller dt if it diverged)."
            )
        return out

    def initial_condition(self, index: int) -> Tensor:
        """Initial vorticity (``w0``, or ``a`` in ``.mat`` files) of trajectory ``index``: ``(H, W)``."""
        index = self._check_index(index)
        if self.format == "mat-v5":
            variables = self._mat_v5()
            if "a" not in variables:
                raise KeyError(
                    f"{self.path} has no initial conditions `a`; found {sorted(variables)}."
                )
            field = variables["a"][index]
        elif self.format == "mat-v7.3":
            field = self._hdf5_read("a", (..., index)).T  # (W, H) -> (H, W)
        else:
            field = self._hdf5_read("w0", index)
        return torch.as_tensor(np.ascontiguousarray(field), dtype=torch.float32)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"trajectory {index} is out of range for the {len(self)} in {self.path}."
            )
        return index % len(self)

    def _mat_v5(self) -> dict[str, np.ndarray]:
        """The variables of an old ``.mat`` file, loaded once per process."""
        if self._mat is None:
            from scipy.io import loadmat

            mat = loadmat(self.path, variable_names=["a", "u"])
            self._mat = {key: value for key, value in mat.items() if not key.startswith("__")}
        return self._mat

    def _hdf5_read(self, key: str, selection: Any) -> np.ndarray:
        """``file[key][selection]`` through a handle opened once per process."""
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = lazy_import("h5py").File(self.path, "r")
            self._handle_pid = os.getpid()
        if key not in self._handle:
            raise KeyError(f"{self.path} has no `{key}` variable; found {sorted(self._handle)}.")
        try:
            return self._handle[key][selection]
        except OSError as err:
            raise ValueError(f"reading `{key}`: {_corrupt(self.path)}") from err

    def __getstate__(self) -> dict[str, Any]:
        # open HDF5 handles cannot be pickled: each worker process reopens the file
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"], state["_mat"] = None, None, None
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, format={self.format!r}, "
            f"num_trajectories={self.num_trajectories}, num_steps={self.num_steps}, "
            f"resolution={self.resolution})"
        )


def _corrupt(path: Path) -> str:
    return (
        f"{path} could not be read as HDF5 or MATLAB .mat (truncated or corrupt?). Delete it and "
        f"{_REGENERATE}."
    )


def _times(values: Any) -> Tensor | None:
    """Record times as a float64 vector, or ``None`` when the file has none."""
    return None if values is None else torch.as_tensor(np.asarray(values, dtype=np.float64).ravel())


def _plain(value: Any) -> Any:
    """HDF5 attribute as a plain Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
