"""ERA5 reader: low/high-resolution pairs from ERA5 as users download it, read lazily.

The reader opens every source lazily with xarray and keeps only an index of (source, time
position) per variable and valid time, so memory does not grow with the number of years: each
``__getitem__`` reads one time step of the selected variables. What it understands:

- both NetCDF namings: the CDS service (``valid_time``, ``pressure_level``) and cfgrib / legacy
  CDS files (``time``, ``isobaricInhPa``); WeatherBench 2 / ARCO-ERA5 Zarr (``time``, ``level``,
  long variable names mapped to short ones, see :mod:`~lightning_climate.datasets.era5_names`);
- legacy CDS files mixing ERA5 and ERA5T along an ``expver`` dimension: combined as ECMWF
  recommends, per point the first non-missing value, ERA5 (``expver`` 1) before ERA5T (5);
- forecast layouts with a ``step`` dimension (cfgrib's view of accumulated fields): the valid
  time is ``time + step``; (time, step) cells that hold no data are skipped;
- the same valid time in several files or forecasts: read once, after checking that the copies
  agree (an error naming both otherwise);
- an ensemble dimension ``number`` (ERA5 EDA members): more samples at the same time;
- sources listed in :mod:`~lightning_climate.datasets.era5_sources` (NetCDF, Zarr, GRIB, CDS zip
  archives, cloud Zarr URLs).

Samples are ``{"hr": float32 (C, H, W), "lr": float32 (C, H/N, W/N), "index": int64,
"time": int64, "lat": float32 (H,)}``: ``hr`` is the field cropped to a multiple of the factor N
(or a patch of it) in physical units; ``lr`` is its NxN block mean,
so the conservation constraint holds exactly in the data; ``time`` is the valid time in seconds
since 1970-01-01; ``lat`` holds the latitudes (degrees) of the rows of ``hr``, for
latitude-weighted metrics. Channels are the variables in the given order, pressure-level variables
expanded per level (``t850``, ``t500``, ...). Latitudes are returned south to north.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_climate.datasets.era5_generate import generate_era5
from lightning_climate.datasets.era5_names import short_name
from lightning_climate.datasets.era5_sources import (
    OpenSource,
    Source,
    find_era5_files,
    open_era5_source,
)
from lightning_climate.datasets.integrity import check_plausible
from lightning_climate.layers.constraints import block_mean

# generate_era5 is re-exported: it was importable from this module before it moved
__all__ = ["ERA5Dataset", "generate_era5"]

_TIME_NAMES = ("valid_time", "time")
_STEP_NAME = "step"
_EXPVER_NAME = "expver"
_LEVEL_NAMES = ("pressure_level", "isobaricInhPa", "level")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_MEMBER_NAME = "number"
# Two copies of one field agree when they differ by at most this fraction of their largest
# magnitude: above the int16 packing error of CDS files (about 1.5e-5 of the field's range, each
# file packed with its own scale), far below any real difference between two times.
_AGREE_RTOL = 1e-4


@dataclass(frozen=True)
class _Layout:
    """How one variable is stored in one source."""

    time_dims: tuple[str, ...]  # ("valid_time",), ("time",) or ("time", "step")
    shape: tuple[int, ...]  # sizes of time_dims
    expver: tuple[int, ...] | None  # positions along expver, ERA5 (1) before ERA5T (5)


def _dim(var: Any, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in var.dims), None)


def _first_valid(values: np.ndarray) -> np.ndarray:
    """Combine along axis 0 keeping, per point, the first non-missing value (ECMWF's expver recipe)."""
    out = values[0].copy()
    for alternative in values[1:]:
        missing = ~np.isfinite(out)
        out[missing] = alternative[missing]
    return out


def _expver_order(ds: Any) -> tuple[int, ...]:
    """Positions along ``expver`` sorted by experiment number ('0001' or 1 = ERA5 first)."""
    values = ds[_EXPVER_NAME].values

    def key(i: int) -> tuple[int, int]:
        try:
            return (0, int(values[i]))
        except (TypeError, ValueError):
            return (1, i)

    return tuple(sorted(range(len(values)), key=key))


def _as_timedelta(step: Any) -> np.ndarray:
    """Forecast steps as timedelta64[s], decoded or numbers with CF units (cfgrib: hours)."""
    values = step.values
    if values.dtype.kind == "m":
        return values.astype("timedelta64[s]")
    unit = str(step.attrs.get("units", "hours")).strip().lower()
    seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}.get(unit[:1])
    if seconds is None or unit.startswith("months"):
        raise ValueError(f"forecast step units {unit!r} are not days, hours, minutes or seconds.")
    return (np.asarray(values, dtype=np.float64) * seconds).round().astype("timedelta64[s]")


def _valid_window(ds: Any) -> tuple[np.datetime64, np.datetime64] | None:
    """ARCO-ERA5's ``valid_time_start``/``valid_time_stop``: the store holds NaN outside them."""
    start, stop = ds.attrs.get("valid_time_start"), ds.attrs.get("valid_time_stop")
    if start is None or stop is None:
        return None
    end = np.datetime64(str(stop))
    if end.dtype == np.dtype("datetime64[D]"):  # a date covers its whole day
        end = end + np.timedelta64(1, "D") - np.timedelta64(1, "s")
    return np.datetime64(str(start), "s"), end.astype("datetime64[s]")


def _load(var: Any, name: str, source: Source) -> np.ndarray:
    """Read a lazily indexed variable; a damaged chunk becomes an error naming the source."""
    try:
        return np.asarray(var.values, dtype=np.float32)
    except (OSError, RuntimeError, ValueError) as err:
        raise OSError(
            f"cannot read {name!r} from {source}: {str(err).rstrip('.')}. A checksum mismatch "
            "or a chunk that cannot be decoded means the file is damaged (bit rot, a truncated "
            "or interrupted download): download or regenerate it."
        ) from err


def _check_latitudes(lat: np.ndarray, units: str | None, source: Source) -> None:
    if not np.isfinite(lat).all() or np.abs(lat).max() > 90:
        raise ValueError(
            f"{source}: latitudes must lie in [-90, 90] degrees, found range "
            f"[{lat.min()}, {lat.max()}]. Check that latitude and longitude are not swapped "
            "and that the coordinate is in degrees."
        )
    steps = np.diff(lat)
    if not ((steps > 0).all() or (steps < 0).all()):
        i = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0]) if steps[0] else 0
        raise ValueError(
            f"{source}: latitudes are not strictly monotonic (rows {i} and {i + 1} hold "
            f"{lat[i]} and {lat[i + 1]}); sort them (xarray's sortby('latitude')) and drop "
            "repeated rows first."
        )
    unit = (units or "").strip().lower()
    if unit and "degree" not in unit and unit not in ("deg", "°", "°n"):
        raise ValueError(
            f"{source}: latitude units are {units!r}, not degrees; convert the coordinate to "
            "degrees_north (numpy.rad2deg for radians)."
        )
    if not unit and np.abs(lat).max() <= np.pi / 2 and np.ptp(lat) > 2:
        raise ValueError(
            f"{source}: latitudes span [{lat.min()}, {lat.max()}] and have no units attribute: "
            "they look like radians. Convert them with numpy.rad2deg, or set the attribute "
            "units='degrees_north' if they are degrees."
        )


class ERA5Dataset(Dataset[dict[str, Tensor]]):
    """Low/high-resolution pairs built from ERA5 files by block-mean coarsening.

    Args:
        paths: files, directories, glob patterns, CDS zip archives or Zarr URLs (see
            :func:`~lightning_climate.datasets.era5_sources.find_era5_files`). Variables may be
            spread over several files (one per variable or per year).
        variables: ERA5 short names, e.g. ``["t2m", "tcw"]`` or ``["t", "z"]``; the long names
            of CDS requests and Zarr stores (``"2m_temperature"``) are mapped to short ones.
        levels: pressure levels in hPa for pressure-level variables (default: all in the file).
        factor: coarsening factor N; ``hr`` is cropped to a multiple of N.
        time_range: inclusive ``(start, end)`` dates, e.g. ``("2017-01-01", "2017-01-01T12")``.
        patch_size: high-resolution patch size (a multiple of N); fields are tiled into
            non-overlapping patches. ``None`` uses the whole (cropped) field.
        storage_options: fsspec options for URLs; ``None`` reads ``gs://`` and ``s3://``
            anonymously (the public ARCO-ERA5 and WeatherBench 2 buckets).

    Raises:
        FileNotFoundError: if no file matches ``paths``.
        KeyError: if a variable or level is missing, naming what the files hold.
        ValueError: for bad factors or patch sizes, latitudes outside [-90, 90], not strictly
            monotonic or not in degrees, grids that differ between files, one valid time with
            different values in two files, or an empty time range.
        OSError: if a chunk cannot be read (e.g. a checksum failure), naming the file.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        variables: Sequence[str],
        levels: Sequence[float] | None = None,
        factor: int = 2,
        time_range: tuple[str, str] | None = None,
        patch_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}.")
        if patch_size is not None and (patch_size < factor or patch_size % factor):
            raise ValueError(
                f"patch_size {patch_size} must be a positive multiple of factor {factor}."
            )
        if not variables:
            raise ValueError("variables must name at least one ERA5 variable, e.g. ['t2m'].")
        self.files = find_era5_files(paths)
        self.variables = [short_name(v) for v in variables]
        self.factor = factor
        self.patch_size = patch_size
        self.storage_options = storage_options
        self._handles: dict[int, OpenSource] = {}
        self._pid = os.getpid()  # the process the handles were opened in
        self._scan(levels, time_range)

    def _scan(self, levels: Sequence[float] | None, time_range: tuple[str, str] | None) -> None:
        """Index (source, time position) per variable and valid time; check grids and levels."""
        span = None if time_range is None else [np.datetime64(t, "s") for t in time_range]
        # per variable: (valid times, source, flat time positions) of every source holding it
        found: dict[str, list[tuple[np.ndarray, int, np.ndarray]]] = {v: [] for v in self.variables}
        self._layouts: dict[tuple[str, int], _Layout] = {}
        self.levels: dict[str, list[float] | None] = {}
        grid: tuple[np.ndarray, np.ndarray, Source] | None = None
        self.members = 1
        available: set[str] = set()
        covered: list[np.datetime64] = []
        for f, source in enumerate(self.files):
            opened = open_era5_source(source, self.storage_options)
            try:
                ds = opened.dataset
                available |= set(ds.data_vars)
                window = _valid_window(ds)
                for name in self.variables:
                    if name not in ds.data_vars:
                        continue
                    var = ds[name]
                    valid, layout = self._times(ds, var, name, source)
                    self._layouts[(name, f)] = layout
                    covered += [valid.min(), valid.max()] if len(valid) else []
                    keep = np.ones(len(valid), dtype=bool)
                    for lo, hi in (w for w in (window, span) if w is not None):
                        keep &= (valid >= lo) & (valid <= hi)
                    if _STEP_NAME in layout.time_dims and keep.any():
                        keep &= self._present(var, layout, name, source)
                    positions = np.flatnonzero(keep)
                    found[name].append((valid[positions], f, positions))
                    self.levels[name] = self._select_levels(ds, var, name, levels, source)
                    if _MEMBER_NAME in var.dims:
                        self.members = max(self.members, ds.sizes[_MEMBER_NAME])
                    lat, lon = self._grid(ds, var, source)
                    if grid is None:
                        grid = (lat, lon, source)
                    elif not (np.array_equal(grid[0], lat) and np.array_equal(grid[1], lon)):
                        raise ValueError(
                            f"{source} has a different latitude/longitude grid than {grid[2]}; "
                            "regrid the files to one grid first."
                        )
            finally:
                opened.close()
        missing = [v for v in self.variables if not found[v]]
        if missing:
            raise KeyError(
                f"variables {missing} not found in {[str(p) for p in self.files]}; the files hold "
                f"{sorted(available)}. Use ERA5 short names such as 't2m', 'tcw', 't', 'z'."
            )
        assert grid is not None
        tables = {name: self._deduplicate(name, found[name]) for name in self.variables}
        times = functools.reduce(np.intersect1d, [valid for valid, _ in tables.values()])
        if not len(times):
            raise ValueError(
                f"no time step with all of {self.variables} in time_range {time_range}; the files "
                f"cover {min(covered) if covered else None} to {max(covered) if covered else None}."
            )
        self.times = times
        self._where = {
            name: table[np.searchsorted(valid, times)] for name, (valid, table) in tables.items()
        }
        # latitudes south to north; crop to a multiple of the factor (or of the patch size)
        lat, lon, _ = grid
        self._n_lat = len(lat)
        self._flip = bool(lat[0] > lat[-1])
        lat = lat[::-1] if self._flip else lat
        tile = self.patch_size or self.factor
        self._shape = (len(lat) // tile * tile, len(lon) // tile * tile)
        if 0 in self._shape:
            raise ValueError(
                f"the grid {(len(lat), len(lon))} is smaller than one {tile}x{tile} tile; use a "
                "smaller factor or patch_size."
            )
        self.latitudes = lat[: self._shape[0]].copy()
        self.longitudes = lon[: self._shape[1]].copy()
        p = self.patch_size
        self._patches = (1, 1) if p is None else (self._shape[0] // p, self._shape[1] // p)

    @staticmethod
    def _times(ds: Any, var: Any, name: str, source: Source) -> tuple[np.ndarray, _Layout]:
        """Valid times of every (time[, step]) cell of ``var``, flattened, and its layout."""
        tdim = _dim(var, _TIME_NAMES)
        # cfgrib drops dimensions of size 1: a file with one time holds it as a scalar
        tname = tdim or next((n for n in _TIME_NAMES if n in ds.coords and ds[n].ndim == 0), None)
        if tname is None:
            raise ValueError(
                f"variable {name!r} in {source} has no time dimension (expected one of "
                f"{_TIME_NAMES}); it has {var.dims}."
            )
        dims = () if tdim is None else (tdim, _STEP_NAME) if _STEP_NAME in var.dims else (tdim,)
        given = ds.coords.get("valid_time")
        if given is not None and given.dims == dims:
            valid = np.atleast_1d(given.values.astype("datetime64[s]")).ravel()
        else:
            valid = np.atleast_1d(ds[tname].values.astype("datetime64[s]"))
            step = ds.coords.get(_STEP_NAME)
            if step is not None and (step.ndim == 0 or _STEP_NAME in var.dims):
                # a step per column, or one step (a scalar after cfgrib squeezes its dimension)
                offset = np.atleast_1d(_as_timedelta(step))
                valid = (valid[:, None] + offset[None, :]).ravel()
        expver = _expver_order(ds) if _EXPVER_NAME in var.dims else None
        return valid, _Layout(dims, tuple(var.sizes[d] for d in dims), expver)

    @staticmethod
    def _present(var: Any, layout: _Layout, name: str, source: Source) -> np.ndarray:
        """Which (time, step) cells hold data: cfgrib fills forecasts absent from the file with NaN.

        Reads one latitude row per cell (of the first level and member), not the fields.
        """
        row = var.isel({_dim(var, _LAT_NAMES): 0})
        extra = [d for d in row.dims if d not in layout.time_dims and d not in _LON_NAMES]
        row = row.isel({d: 0 for d in extra if d != _EXPVER_NAME})
        values = _load(row.transpose(*layout.time_dims, ...), name, source)
        return np.isfinite(values.reshape(int(np.prod(layout.shape)), -1)).any(axis=1)

    def _deduplicate(
        self, name: str, found: list[tuple[np.ndarray, int, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique valid times of ``name`` and their (source, position), copies checked."""
        valid = np.concatenate([v for v, _, _ in found])
        table = np.concatenate(
            [np.stack([np.full(len(p), f), p], axis=1) for _, f, p in found]
        ).astype(np.int64)
        order = np.argsort(valid, kind="stable")
        valid, table = valid[order], table[order]
        first = np.r_[True, valid[1:] != valid[:-1]][: len(valid)]
        group = np.maximum.accumulate(np.where(first, np.arange(len(valid)), 0))
        for i in np.flatnonzero(~first):
            self._check_copies(name, valid[i], table[group[i]], table[i])
        return valid[first], table[first]

    def _describe(self, name: str, f: int, pos: int) -> str:
        cell = ", ".join(f"{d}={i}" for d, i in self._cell(name, f, pos).items())
        return f"{self.files[f]} ({cell})"

    def _cell(self, name: str, f: int, pos: int) -> dict[str, int]:
        """The (time[, step]) indices of flat time position ``pos`` of ``name`` in source ``f``."""
        layout = self._layouts[(name, f)]
        cell = np.unravel_index(pos, layout.shape)
        return {d: int(i) for d, i in zip(layout.time_dims, cell, strict=True)}

    def _check_copies(self, name: str, time: np.datetime64, a: np.ndarray, b: np.ndarray) -> None:
        """Two copies of one valid time must agree wherever both hold values."""
        has_members = _MEMBER_NAME in self._handle(int(a[0]))[name].dims
        for member in range(self.members if has_members else 1):
            x = self._read(name, int(a[0]), int(a[1]), member)
            y = self._read(name, int(b[0]), int(b[1]), member)
            both = np.isfinite(x) & np.isfinite(y)
            diff = np.abs(x - y)[both]
            scale = max(np.abs(x[both]).max(initial=0), np.abs(y[both]).max(initial=0))
            if diff.size and diff.max() > _AGREE_RTOL * scale:
                raise ValueError(
                    f"variable {name!r} at {time} differs between "
                    f"{self._describe(name, int(a[0]), int(a[1]))} and "
                    f"{self._describe(name, int(b[0]), int(b[1]))} (largest difference "
                    f"{diff.max():.6g}); one valid time must hold one field. Remove the file "
                    "with the wrong copy or the overlap, or exclude this time with time_range."
                )

    @staticmethod
    def _select_levels(
        ds: Any, var: Any, name: str, levels: Sequence[float] | None, source: Source
    ) -> list[float] | None:
        ldim = _dim(var, _LEVEL_NAMES)
        if ldim is None:
            return None
        present = [float(v) for v in ds[ldim].values]
        if levels is None:
            return present
        absent = [lv for lv in levels if float(lv) not in present]
        if absent:
            raise KeyError(
                f"levels {absent} hPa of variable {name!r} are not in {source}; it has {present}. "
                "Set `levels` to a subset of these."
            )
        return [float(lv) for lv in levels]

    @staticmethod
    def _grid(ds: Any, var: Any, source: Source) -> tuple[np.ndarray, np.ndarray]:
        latd, lond = _dim(var, _LAT_NAMES), _dim(var, _LON_NAMES)
        if latd is None or lond is None:
            raise ValueError(
                f"{source}: variable {var.name!r} needs latitude/longitude dimensions named "
                f"{_LAT_NAMES} and {_LON_NAMES}; it has {var.dims}."
            )
        lat = ds[latd].values.astype(np.float64)
        _check_latitudes(lat, ds[latd].attrs.get("units"), source)
        return lat, ds[lond].values.astype(np.float64)

    @property
    def channels(self) -> list[str]:
        """Channel names: ``t2m`` for single-level variables, ``t850`` per pressure level."""
        names = []
        for v in self.variables:
            lv = self.levels[v]
            names += [v] if lv is None else [f"{v}{lev:g}" for lev in lv]
        return names

    @property
    def num_fields(self) -> int:
        """Number of (time, member) fields; each gives one or more patches."""
        return len(self.times) * self.members

    def __len__(self) -> int:
        return self.num_fields * self._patches[0] * self._patches[1]

    def __getstate__(self) -> dict[str, Any]:
        # open file handles stay in their process; workers reopen lazily
        return {**self.__dict__, "_handles": {}}

    def _handle(self, f: int) -> Any:
        if self._pid != os.getpid():
            # a forked DataLoader worker: never share the parent's open files (HDF5 is not
            # fork-safe, and a zip member's seek-then-read would race on the shared offset)
            self._handles, self._pid = {}, os.getpid()
        if f not in self._handles:
            self._handles[f] = open_era5_source(self.files[f], self.storage_options)
        return self._handles[f].dataset

    def _read(
        self,
        name: str,
        f: int,
        pos: int,
        member: int,
        rows: slice | None = None,
        cols: slice | None = None,
    ) -> np.ndarray:
        """Raw values (levels, lat, lon) of ``name`` at flat time position ``pos`` of source ``f``.

        Rows are in the file's order; ``expver`` copies are combined (first non-missing value).
        """
        layout = self._layouts[(name, f)]
        var = self._handle(f)[name]
        sel: dict[str, Any] = self._cell(name, f, pos)
        if _MEMBER_NAME in var.dims:
            sel[_MEMBER_NAME] = member
        var = var.isel(sel)
        ldim = _dim(var, _LEVEL_NAMES)
        if ldim is not None:
            var = var.sel({ldim: self.levels[name]})
        latd, lond = _dim(var, _LAT_NAMES), _dim(var, _LON_NAMES)
        var = var.isel({latd: rows or slice(None), lond: cols or slice(None)})
        dims = [_EXPVER_NAME] if layout.expver is not None else []
        dims += ([ldim] if ldim is not None else []) + [latd, lond]
        values = _load(var.transpose(*dims), name, self.files[f])
        if layout.expver is not None:
            values = _first_valid(values[list(layout.expver)])
        return values.reshape(-1, *values.shape[-2:])

    def read_field(
        self, field: int, rows: slice | None = None, cols: slice | None = None
    ) -> Tensor:
        """Read one raw (physical units) cropped field (C, H, W) for field number ``field``."""
        t, member = divmod(field, self.members)
        rows = rows or slice(0, self._shape[0])
        cols = cols or slice(0, self._shape[1])
        # rows count south to north; files usually store north to south
        n = self._n_lat
        file_rows = slice(n - rows.stop, n - rows.start) if self._flip else rows
        out = []
        for name in self.variables:
            f, pos = (int(i) for i in self._where[name][t])
            values = self._read(name, f, pos, member, file_rows, cols)
            if not np.isfinite(values).all():
                raise ValueError(
                    f"variable {name!r} in {self.files[f]} has NaN or infinite values at "
                    f"time {self.times[t]}; fill or mask them first (e.g. xarray's fillna) or "
                    "choose a variable/region without missing values (sst is NaN over land)."
                )
            check_plausible(values, name, f"{self.files[f]} at {self.times[t]}")
            if self._flip:
                values = values[..., ::-1, :]
            out.append(torch.from_numpy(values.copy()))
        return torch.cat(out)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Return the sample ``index`` (see the module docstring for its keys)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples.")
        per_field = self._patches[0] * self._patches[1]
        field, patch = divmod(index, per_field)
        if self.patch_size is None:
            rows = slice(0, self._shape[0])
            hr = self.read_field(field)
        else:
            p = self.patch_size
            i, j = divmod(patch, self._patches[1])
            rows = slice(i * p, (i + 1) * p)
            hr = self.read_field(field, rows, slice(j * p, (j + 1) * p))
        lr = block_mean(hr, self.factor) if self.factor > 1 else hr.clone()
        t = field // self.members
        return {
            "hr": hr,
            "lr": lr,
            "index": torch.tensor(index, dtype=torch.int64),
            "time": torch.tensor(int(self.times[t].astype(np.int64)), dtype=torch.int64),
            "lat": torch.tensor(self.latitudes[rows], dtype=torch.float32),
        }
