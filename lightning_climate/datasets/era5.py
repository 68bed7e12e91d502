"""ERA5 reader (NetCDF in CDS or cfgrib naming, Zarr) and a generator of ERA5-format files.

The reader opens every file lazily with xarray and keeps only an index of (file, time step,
ensemble member, patch) per sample, so memory does not grow with the number of years: each
``__getitem__`` reads one time step of the selected variables. Both namings that users have are
understood: the CDS NetCDF service (``valid_time``, ``pressure_level``, ``latitude``,
``longitude``) and cfgrib / older CDS files (``time``, ``isobaricInhPa``). An ensemble dimension
``number`` (ERA5 EDA members) is treated as more samples at the same time.

Samples are ``{"hr": float32 (C, H, W), "lr": float32 (C, H/N, W/N), "index": int64,
"time": int64, "lat": float32 (H,)}``: ``hr`` is the field cropped to a multiple of the factor N
(or a patch of it), normalised by the given :class:`FieldNormalizer`; ``lr`` is its NxN block mean,
so the conservation constraint holds exactly in the data; ``time`` is in seconds since 1970-01-01;
``lat`` holds the latitudes (degrees) of the rows of ``hr``, for latitude-weighted metrics.
Channels are the variables in the given order, pressure-level variables expanded per level
(``t850``, ``t500``, ...). Latitudes are returned south to north.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_climate.layers.constraints import block_mean
from lightning_climate.utils import atomic_path, lazy_import

__all__ = ["ERA5Dataset", "FieldNormalizer", "find_era5_files", "generate_era5"]

_TIME_NAMES = ("valid_time", "time")
_LEVEL_NAMES = ("pressure_level", "isobaricInhPa", "level")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_MEMBER_NAME = "number"


def find_era5_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, directories (``*.nc``, ``*.zarr`` inside) and glob patterns, sorted.

    Raises:
        FileNotFoundError: if nothing matches, naming the paths and how to get data.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and p.suffix != ".zarr":
            found += sorted(p.glob("*.nc")) + sorted(p.glob("*.zarr"))
        elif p.exists():
            found.append(p)
        else:
            found += [Path(m) for m in sorted(glob.glob(str(item)))]
    if not found:
        raise FileNotFoundError(
            f"no ERA5 files (*.nc or *.zarr) found at {[str(i) for i in items]}. Download them "
            "from the Copernicus Climate Data Store, use the embedded sample "
            "tests/data/era5/era5_sample.nc, or write ERA5-format files with "
            "`python -m lightning_climate.datasets.era5 --out <dir>`."
        )
    return found


def _open(path: Path) -> Any:
    xr = lazy_import("xarray")
    if path.suffix == ".zarr":
        lazy_import("zarr")
        return xr.open_dataset(path, engine="zarr", chunks=None)
    return xr.open_dataset(path, chunks=None, cache=False)


def _dim(var: Any, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in var.dims), None)


class FieldNormalizer(nn.Module):
    """Per-channel affine map ``(v - offset) / scale`` shared by high- and low-resolution fields.

    One affine map for both keeps block means intact: the normalised ``lr`` is still the block
    mean of the normalised ``hr``. The statistics are buffers, so they travel with checkpoints.

    Args:
        num_channels: number of channels.
    """

    offset: Tensor
    scale: Tensor

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.zeros(num_channels))
        self.register_buffer("scale", torch.ones(num_channels))

    def forward(self, field: Tensor) -> Tensor:
        """Normalise a (..., C, H, W) field."""
        return (field - self.offset[:, None, None]) / self.scale[:, None, None]

    def inverse(self, field: Tensor) -> Tensor:
        """Map a normalised (..., C, H, W) field back to physical units."""
        return field * self.scale[:, None, None] + self.offset[:, None, None]

    @staticmethod
    def statistics(dataset: ERA5Dataset) -> dict[str, Tensor]:
        """Per-channel ``min``, ``max``, ``mean``, ``std`` of the raw high-resolution fields (one pass)."""
        lo = hi = total = squares = None
        count = 0
        for i in range(dataset.num_fields):
            flat = dataset.read_field(i).double().flatten(1)
            mins, maxs = flat.min(1).values, flat.max(1).values
            lo = mins if lo is None else torch.minimum(lo, mins)
            hi = maxs if hi is None else torch.maximum(hi, maxs)
            total = flat.sum(1) if total is None else total + flat.sum(1)
            squares = (flat**2).sum(1) if squares is None else squares + (flat**2).sum(1)
            count += flat.shape[1]
        if lo is None or hi is None or total is None or squares is None:
            raise ValueError("cannot compute statistics of an empty training split.")
        mean = total / count
        std = (squares / count - mean**2).clamp_min(0).sqrt()
        return {"min": lo.float(), "max": hi.float(), "mean": mean.float(), "std": std.float()}

    def set_from(
        self, stats: dict[str, Tensor], kind: Literal["minmax", "zscore", "scale", "none"]
    ) -> None:
        """Choose the map from raw statistics of :meth:`statistics`.

        ``"minmax"`` maps the training range to [0, 1] (Harder et al.); ``"zscore"`` to mean 0,
        std 1; ``"scale"`` divides by the largest training magnitude, so 0 stays 0 and signs are
        kept (the safe choice for the softmax constraint on non-negative quantities, whose test
        values may fall below the training minimum); ``"none"`` is the identity.
        """
        zero, one = torch.zeros_like(stats["min"]), torch.ones_like(stats["min"])
        if kind == "minmax":
            offset, scale = stats["min"], stats["max"] - stats["min"]
        elif kind == "zscore":
            offset, scale = stats["mean"], stats["std"]
        elif kind == "scale":
            offset, scale = zero, torch.maximum(stats["min"].abs(), stats["max"].abs())
        else:
            offset, scale = zero, one
        self.offset.copy_(offset)
        self.scale.copy_(torch.where(scale > 0, scale, one))


class ERA5Dataset(Dataset[dict[str, Tensor]]):
    """Low/high-resolution pairs built from ERA5 files by block-mean coarsening.

    Args:
        paths: files, directories or glob patterns of NetCDF (``.nc``) or Zarr (``.zarr``) data.
            Variables may be spread over several files (one per variable or per year).
        variables: ERA5 short names, e.g. ``["t2m", "tcw"]`` or ``["t", "z"]``.
        levels: pressure levels in hPa for pressure-level variables (default: all in the file).
        factor: coarsening factor N; ``hr`` is cropped to a multiple of N.
        time_range: inclusive ``(start, end)`` dates, e.g. ``("2017-01-01", "2017-01-01T12")``.
        patch_size: high-resolution patch size (a multiple of N); fields are tiled into
            non-overlapping patches. ``None`` uses the whole (cropped) field.
        normalizer: affine map applied to ``hr`` before ``lr`` is pooled from it.

    Raises:
        FileNotFoundError: if no file matches ``paths``.
        KeyError: if a variable or level is missing, naming what the files hold.
        ValueError: for bad factors or patch sizes, latitudes outside [-90, 90], grids that
            differ between files, or an empty time range.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        variables: Sequence[str],
        levels: Sequence[float] | None = None,
        factor: int = 2,
        time_range: tuple[str, str] | None = None,
        patch_size: int | None = None,
        normalizer: FieldNormalizer | None = None,
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
        self.variables = list(variables)
        self.factor = factor
        self.patch_size = patch_size
        self.normalizer = normalizer
        self._handles: dict[int, Any] = {}
        self._scan(levels, time_range)

    def _scan(self, levels: Sequence[float] | None, time_range: tuple[str, str] | None) -> None:
        """Build the per-variable index of (file, time position) and check grids and levels."""
        where: dict[str, dict[np.datetime64, tuple[int, int]]] = {v: {} for v in self.variables}
        self.levels: dict[str, list[float] | None] = {}
        grid: tuple[np.ndarray, np.ndarray] | None = None
        members = 1
        available: set[str] = set()
        for f, path in enumerate(self.files):
            ds = _open(path)
            try:
                available |= set(ds.data_vars)
                for name in self.variables:
                    if name not in ds.data_vars:
                        continue
                    var = ds[name]
                    tdim = _dim(var, _TIME_NAMES)
                    if tdim is None:
                        raise ValueError(
                            f"variable {name!r} in {path} has no time dimension (expected one of "
                            f"{_TIME_NAMES}); it has {var.dims}."
                        )
                    for t, value in enumerate(ds[tdim].values.astype("datetime64[s]")):
                        where[name][value] = (f, t)
                    self.levels[name] = self._select_levels(ds, var, name, levels, path)
                    if _MEMBER_NAME in var.dims:
                        members = max(members, ds.sizes[_MEMBER_NAME])
                    lat, lon = self._grid(ds, var, path)
                    if grid is None:
                        grid = (lat, lon)
                    elif not (np.array_equal(grid[0], lat) and np.array_equal(grid[1], lon)):
                        raise ValueError(
                            f"{path} has a different latitude/longitude grid than "
                            f"{self.files[0]}; regrid the files to one grid first."
                        )
            finally:
                ds.close()
        missing = [v for v in self.variables if not where[v]]
        if missing:
            raise KeyError(
                f"variables {missing} not found in {[str(p) for p in self.files]}; the files hold "
                f"{sorted(available)}. Use ERA5 short names such as 't2m', 'tcw', 't', 'z'."
            )
        times = sorted(set.intersection(*(set(w) for w in where.values())))
        if time_range is not None:
            start, end = (np.datetime64(t, "s") for t in time_range)
            times = [t for t in times if start <= t <= end]
        if not times:
            raise ValueError(
                f"no time step with all of {self.variables} in time_range {time_range}; the files "
                f"cover {min(min(w) for w in where.values())} to "
                f"{max(max(w) for w in where.values())}."
            )
        assert grid is not None
        self.times = np.array(times)
        self._where = {v: np.array([where[v][t] for t in times]) for v in self.variables}
        self.members = members
        # latitudes south to north; crop to a multiple of the factor (or of the patch size)
        lat, lon = grid
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
    def _select_levels(
        ds: Any, var: Any, name: str, levels: Sequence[float] | None, path: Path
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
                f"levels {absent} hPa of variable {name!r} are not in {path}; it has {present}. "
                "Set `levels` to a subset of these."
            )
        return [float(lv) for lv in levels]

    @staticmethod
    def _grid(ds: Any, var: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
        latd, lond = _dim(var, _LAT_NAMES), _dim(var, _LON_NAMES)
        if latd is None or lond is None:
            raise ValueError(
                f"{path}: variable {var.name!r} needs latitude/longitude dimensions named "
                f"{_LAT_NAMES} and {_LON_NAMES}; it has {var.dims}."
            )
        lat = ds[latd].values.astype(np.float64)
        if np.abs(lat).max() > 90 or not np.isfinite(lat).all():
            raise ValueError(
                f"{path}: latitudes must lie in [-90, 90] degrees, found range "
                f"[{lat.min()}, {lat.max()}]. Check that latitude and longitude are not swapped "
                "and that the coordinate is in degrees."
            )
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
        if f not in self._handles:
            self._handles[f] = _open(self.files[f])
        return self._handles[f]

    def read_field(
        self, field: int, rows: slice | None = None, cols: slice | None = None
    ) -> Tensor:
        """Read one raw (physical units) cropped field (C, H, W) for field number ``field``."""
        t, member = divmod(field, self.members)
        rows = rows or slice(0, self._shape[0])
        cols = cols or slice(0, self._shape[1])
        out = []
        for name in self.variables:
            f, ti = self._where[name][t]
            ds = self._handle(int(f))
            var = ds[name]
            sel: dict[str, Any] = {_dim(var, _TIME_NAMES): int(ti)}
            if _MEMBER_NAME in var.dims:
                sel[_MEMBER_NAME] = member
            var = var.isel(sel)
            ldim = _dim(var, _LEVEL_NAMES)
            if ldim is not None:
                var = var.sel({ldim: self.levels[name]})
            latd, lond = _dim(var, _LAT_NAMES), _dim(var, _LON_NAMES)
            n_lat = var.sizes[latd]
            # rows count south to north; files usually store north to south
            lat_rows = slice(n_lat - rows.stop, n_lat - rows.start) if self._flip else rows
            var = var.isel({latd: lat_rows, lond: cols})
            dims = ([ldim] if ldim is not None else []) + [latd, lond]
            values = np.asarray(var.transpose(*dims).values, dtype=np.float32)
            if not np.isfinite(values).all():
                raise ValueError(
                    f"variable {name!r} in {self.files[int(f)]} has NaN or infinite values at "
                    f"time {self.times[t]}; fill or mask them first (e.g. xarray's fillna) or "
                    "choose a variable/region without missing values (sst is NaN over land)."
                )
            if self._flip:
                values = values[..., ::-1, :]
            out.append(torch.from_numpy(values.copy()).reshape(-1, *values.shape[-2:]))
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
        if self.normalizer is not None:
            hr = self.normalizer(hr)
        lr = block_mean(hr, self.factor) if self.factor > 1 else hr.clone()
        t = field // self.members
        return {
            "hr": hr,
            "lr": lr,
            "index": torch.tensor(index, dtype=torch.int64),
            "time": torch.tensor(int(self.times[t].astype(np.int64)), dtype=torch.int64),
            "lat": torch.tensor(self.latitudes[rows], dtype=torch.float32),
        }


def _synthetic_fields(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, day: np.ndarray
) -> dict[str, np.ndarray]:
    """Smooth, physically plausible t2m (K), tcw (kg m-2) and a temperature anomaly on (T, H, W)."""
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    season = np.cos(2 * np.pi * (day[:, None, None] - 15) / 365.25)
    waves = np.zeros((len(day), len(lat), len(lon)))
    for k in range(1, 5):
        amp, phase, speed = rng.normal(0, 1.0 / k), rng.uniform(0, 2 * np.pi), rng.normal(0, 3)
        m = rng.integers(1, 4)
        waves += amp * np.cos(k * lo + phase + speed * day[:, None, None] / 10) * np.cos(m * la)
    t2m = 258 + 40 * np.cos(la) ** 2 - 15 * np.sin(la) * season + 3 * waves
    tcw = (2 + 45 * np.cos(la) ** 4) * np.exp(0.3 * waves)
    return {"t2m": t2m, "tcw": tcw, "anomaly": waves}


def generate_era5(
    root: str | os.PathLike[str],
    years: Sequence[int] = (2000,),
    hours: int = 24,
    grid: tuple[int, int] = (33, 64),
    levels: Sequence[int] = (850, 500),
    naming: Literal["cds", "cfgrib"] = "cds",
    seed: int = 0,
) -> list[Path]:
    """Write one ERA5-format NetCDF file per year, ``era5_<year>.nc``, under ``root``.

    Variables: single-level ``t2m`` (K) and ``tcw`` (kg m-2, positive), pressure-level ``t`` (K)
    and ``z`` (m2 s-2), on a regular global grid from 90 to -90 degrees latitude and from 0
    eastwards, every ``hours`` hours. ``naming="cds"`` writes the CDS NetCDF layout
    (``valid_time`` in seconds since 1970, ``pressure_level``); ``"cfgrib"`` the cfgrib layout
    (``time``, ``isobaricInhPa``). Fields are smooth and seeded, with a seasonal cycle and a
    latitude gradient. Existing files are kept (idempotent); files are written atomically.
    """
    xr = lazy_import("xarray")
    root = Path(root)
    n_lat, n_lon = grid
    lat = np.linspace(90, -90, n_lat)
    lon = np.arange(n_lon) * (360 / n_lon)
    time_name, level_name = (
        ("valid_time", "pressure_level")
        if naming == "cds"
        else (
            "time",
            "isobaricInhPa",
        )
    )
    written = []
    for year in years:
        path = root / f"era5_{year}.nc"
        written.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, year])
        times = np.arange(
            np.datetime64(f"{year}-01-01"),
            np.datetime64(f"{year + 1}-01-01"),
            np.timedelta64(hours, "h"),
        ).astype("datetime64[ns]")
        day = (times - times[0]) / np.timedelta64(1, "D")
        fields = _synthetic_fields(rng, lat, lon, day)
        lev = np.asarray(levels, dtype=np.float64)
        # standard-atmosphere heights (m) of each level, lapse rate 6.5 K/km
        height = 44330.8 * (1 - (lev / 1013.25) ** 0.190263)
        t = fields["t2m"][:, None] - 6.5e-3 * height[None, :, None, None]
        z = 9.80665 * (height[None, :, None, None] + 30 * (fields["t2m"][:, None] - 273))
        dims3, dims4 = (
            (time_name, "latitude", "longitude"),
            (time_name, level_name, "latitude", "longitude"),
        )
        ds = xr.Dataset(
            {
                "t2m": (
                    dims3,
                    fields["t2m"].astype(np.float32),
                    {"units": "K", "long_name": "2 metre temperature"},
                ),
                "tcw": (
                    dims3,
                    fields["tcw"].astype(np.float32),
                    {"units": "kg m**-2", "long_name": "Total column water"},
                ),
                "t": (dims4, t.astype(np.float32), {"units": "K", "long_name": "Temperature"}),
                "z": (
                    dims4,
                    z.astype(np.float32),
                    {"units": "m**2 s**-2", "long_name": "Geopotential"},
                ),
            },
            coords={
                time_name: times,
                level_name: (level_name, lev, {"units": "millibars"}),
                "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon, {"units": "degrees_east"}),
            },
            attrs={
                "Conventions": "CF-1.7",
                "source": "lightning_climate.datasets.era5.generate_era5 (synthetic)",
            },
        )
        encoding = {
            time_name: {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"}
        }
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return written


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write ERA5-format NetCDF files (synthetic fields)."
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--years", type=int, nargs="+", default=[2000])
    parser.add_argument("--hours", type=int, default=24, help="time step in hours")
    parser.add_argument("--grid", type=int, nargs=2, default=[33, 64], help="n_lat n_lon")
    parser.add_argument("--naming", choices=["cds", "cfgrib"], default="cds")
    args = parser.parse_args(argv)
    for path in generate_era5(
        args.out, args.years, args.hours, tuple(args.grid), naming=args.naming
    ):
        print(path)


if __name__ == "__main__":
    _cli()
