"""Reader of 2-D Navier-Stokes vorticity files: ours (HDF5), FNO ``.mat`` and neuraloperator ``.pt``.

The solver lives in :mod:`lightning_climate.datasets.navier_stokes_solver` and the writer in
:mod:`lightning_climate.datasets.navier_stokes_generate`; their public names are re-exported here,
where they were first published.
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

from lightning_climate.datasets.navier_stokes_generate import (
    generate_navier_stokes,
    trajectory_generator,
)
from lightning_climate.datasets.navier_stokes_neuralop import NEURALOP_SUFFIXES, load_neuralop_pt
from lightning_climate.datasets.navier_stokes_solver import (
    gaussian_random_field,
    li_forcing,
    solve_vorticity,
)
from lightning_climate.utils import lazy_import

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


class NavierStokesTrajectories(Dataset[Tensor]):
    """Lazy reader of Navier-Stokes vorticity trajectories.

    Opens four formats, recognised by content (``.pt``/``.pth`` by suffix):

    * files of :func:`generate_navier_stokes` (HDF5, dataset ``vorticity`` ``(N, T, H, W)``);
    * the published FNO MATLAB v7.3 ``.mat`` files (HDF5 written column-major: the axis order is
      reversed on read, as Li's ``MatReader`` does, so ``u`` is ``(N, H, W, T)``);
    * older MATLAB ``.mat`` files (read whole with :func:`scipy.io.loadmat` on first access);
    * neuraloperator's ``nsforcing_{train,test}_{res}.pt`` (``{"x", "y"}`` of shape ``(N, s, s)``,
      loaded with ``torch.load(weights_only=True)``, memory-mapped): each sample is a trajectory of
      one step, the vorticity ``y``; ``x`` (the forcing input of that data set) is not read.

    In the ``.mat`` files ``a`` is the initial condition and ``u[..., 0]`` the state at the first
    record, not ``t = 0``. HDF5 files are opened once per process on first access, so the reader is
    safe with :class:`~torch.utils.data.DataLoader` worker processes.

    Args:
        path: the data file.

    Attributes:
        format: ``"hdf5"``, ``"mat-v7.3"``, ``"mat-v5"`` or ``"neuralop-pt"``.
        attrs: the file's metadata (every generator parameter for our files).
        times: record times ``(num_steps,)`` from the file's ``t``, or ``None`` if it has none.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Navier-Stokes data file {self.path} does not exist; {_REGENERATE}, or point "
                f"`path` at a published FNO .mat or neuraloperator nsforcing_*.pt file."
            )
        self._handle: Any = None
        self._handle_pid: int | None = None
        self._datasets: dict[str, Any] = {}
        self._mat: dict[str, np.ndarray] | None = None
        self._pt: dict[str, Tensor] | None = None
        h5py = lazy_import("h5py")
        if self.path.suffix.lower() in NEURALOP_SUFFIXES:
            y = self._neuralop()["y"]
            self.format, self._key, self._shape = "neuralop-pt", "y", (len(y), 1, *y.shape[1:])
            self.attrs, self.times = {"format": "neuralop-pt"}, None
        elif h5py.is_hdf5(self.path):
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
        if self.format == "neuralop-pt":
            field = self._neuralop()["y"][index, None].to(torch.float32, copy=True).numpy()
        elif self.format == "mat-v5":
            field = self._mat_v5()["u"][index].transpose(2, 0, 1)  # (H, W, T) -> (T, H, W)
        elif self.format == "mat-v7.3":
            field = self._hdf5_read("u", (..., index)).transpose(0, 2, 1)  # (T, W, H) -> (T, H, W)
        else:
            field = self._hdf5_read("vorticity", index)
        return self._finite(field, f"trajectory {index}")

    def snapshot(self, index: int, step: int) -> Tensor:
        """Record ``step`` of trajectory ``index`` as float32 ``(H, W)``, checked to be finite.

        Equals ``self[index][step]`` but reads only that record from HDF5 and ``.mat`` v7.3 files
        (the checksummed chunk holding it, never the other records into memory), so a sampler of
        single snapshots reads ``num_steps`` times less than one of whole trajectories.
        """
        index = self._check_index(index)
        if not -self.num_steps <= step < self.num_steps:
            raise IndexError(
                f"step {step} is out of range for the {self.num_steps} records per trajectory of "
                f"{self.path}."
            )
        step %= self.num_steps
        if self.format == "neuralop-pt":
            field = self._neuralop()["y"][index].to(torch.float32, copy=True).numpy()
        elif self.format == "mat-v5":
            field = self._mat_v5()["u"][index, :, :, step]
        elif self.format == "mat-v7.3":
            field = self._hdf5_read("u", (step, ..., index)).T  # (W, H) -> (H, W)
        else:
            field = self._hdf5_read("vorticity", (index, step))
        return self._finite(field, f"step {step} of trajectory {index}")

    def _finite(self, field: np.ndarray, what: str) -> Tensor:
        """``field`` as a float32 tensor, or an error naming ``what`` if it holds NaN or Inf."""
        out = torch.as_tensor(np.ascontiguousarray(field), dtype=torch.float32)
        # one pass, no mask: a float64 sum of finite float32 values cannot overflow, NaN/Inf spread
        if not math.isfinite(out.sum(dtype=torch.float64).item()):
            raise ValueError(
                f"{what} of {self.path} contains NaN or infinite values; the file is "
                f"damaged or came from a diverged solve: {_REGENERATE} (smaller dt if it diverged)."
            )
        return out

    def initial_condition(self, index: int) -> Tensor:
        """Initial vorticity (``w0``, or ``a`` in ``.mat`` files) of trajectory ``index``: ``(H, W)``."""
        index = self._check_index(index)
        if self.format == "neuralop-pt":
            raise KeyError(
                f"{self.path} (neuraloperator layout) holds no initial conditions: its `x` is the "
                f"forcing input of the forcing -> vorticity task and `y` the vorticity read here; "
                f"load `x` with lightning_climate.datasets.navier_stokes_neuralop.load_neuralop_pt."
            )
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

    def _neuralop(self) -> dict[str, Tensor]:
        """``x`` and ``y`` of a neuraloperator ``.pt`` file, memory-mapped once per process."""
        if self._pt is None:
            self._pt = load_neuralop_pt(self.path)
        return self._pt

    def _hdf5_read(self, key: str, selection: Any) -> np.ndarray:
        """``file[key][selection]`` through a handle opened once per process."""
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = lazy_import("h5py").File(self.path, "r")
            self._handle_pid, self._datasets = os.getpid(), {}
        dataset = self._datasets.get(key)
        if dataset is None:  # looked up once: a lookup costs as much as reading a 64 x 64 record
            if key not in self._handle:
                raise KeyError(
                    f"{self.path} has no `{key}` variable; found {sorted(self._handle)}."
                )
            dataset = self._datasets[key] = self._handle[key]
        try:
            return dataset[selection]
        except OSError as err:
            if dataset.fletcher32:
                raise ValueError(
                    f"{self.path}: reading `{key}` failed ({err}): its fletcher32 checksum does not "
                    f"match, the file is damaged. Delete it and {_REGENERATE}, or download it again."
                ) from err
            raise ValueError(f"reading `{key}`: {_corrupt(self.path)}") from err

    def __getstate__(self) -> dict[str, Any]:
        # open HDF5 handles cannot be pickled: each worker process reopens the file
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"], state["_mat"], state["_pt"] = None, None, None, None
        state["_datasets"] = {}
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
