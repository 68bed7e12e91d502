"""Generator of ERA5-format files with synthetic fields, for multi-year layouts and tests.

The files follow the layouts the reader of :mod:`lightning_climate.datasets.era5` understands (CDS
NetCDF or cfgrib naming), so the demo, the tests and real downloads go through the same reader.
Run ``python -m lightning_climate.datasets.era5_generate --out DIR --years 2000 2001``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_climate.utils import atomic_path, lazy_import

__all__ = ["generate_era5"]


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
    file_format: Literal["netcdf", "zarr"] = "netcdf",
) -> list[Path]:
    """Write one ERA5-format file per year, ``era5_<year>.nc`` (or ``.zarr``), under ``root``.

    Variables: single-level ``t2m`` (K) and ``tcw`` (kg m-2, positive), pressure-level ``t`` (K)
    and ``z`` (m2 s-2), on a regular global grid from 90 to -90 degrees latitude and from 0
    eastwards, every ``hours`` hours. ``naming="cds"`` writes the CDS NetCDF layout
    (``valid_time`` in seconds since 1970, ``pressure_level``); ``"cfgrib"`` the cfgrib layout
    (``time``, ``isobaricInhPa``). Fields are smooth and seeded, with a seasonal cycle and a
    latitude gradient. Existing files are kept (idempotent); files are written atomically.

    Every variable is stored one field per chunk with a checksum, so damaged bytes are reported
    on read instead of read as values: NetCDF4 with HDF5's Fletcher-32 filter
    (``fletcher32=True``); Zarr with the CRC-32C codec of zarr 3 (zarr 2 has none: no checksum).
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
    if file_format not in ("netcdf", "zarr"):
        raise ValueError(f"file_format must be 'netcdf' or 'zarr', got {file_format!r}.")
    written = []
    for year in years:
        path = root / f"era5_{year}.{'nc' if file_format == 'netcdf' else 'zarr'}"
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
                "source": "lightning_climate.datasets.era5_generate.generate_era5 (synthetic)",
            },
        )
        _write(ds, path, time_name)
    return written


def _write(ds: Any, path: Path, time_name: str) -> None:
    """Write ``ds`` atomically, one field per chunk, every chunk checksummed where possible."""
    time = {time_name: {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"}}
    fields = {name: (1,) * (ds[name].ndim - 2) + ds[name].shape[-2:] for name in ds.data_vars}
    with atomic_path(path) as tmp:
        if path.suffix == ".nc":
            encoding = {
                name: {"chunksizes": chunks, "fletcher32": True} for name, chunks in fields.items()
            }
            ds.to_netcdf(tmp, engine="h5netcdf", encoding={**encoding, **time})
            return
        zarr = lazy_import("zarr")
        checksum = getattr(zarr.codecs, "Crc32cCodec", None)  # zarr>=3
        tmp.unlink()  # a store is a directory
        try:
            encoding = {name: {"chunks": chunks} for name, chunks in fields.items()}
            if checksum is not None:
                for name in encoding:
                    encoding[name]["compressors"] = [zarr.codecs.ZstdCodec(), checksum()]
            ds.to_zarr(tmp, mode="w", encoding={**encoding, **time}, consolidated=False)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write ERA5-format NetCDF or Zarr files (synthetic fields)."
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--years", type=int, nargs="+", default=[2000])
    parser.add_argument("--hours", type=int, default=24, help="time step in hours")
    parser.add_argument("--grid", type=int, nargs=2, default=[33, 64], help="n_lat n_lon")
    parser.add_argument("--naming", choices=["cds", "cfgrib"], default="cds")
    parser.add_argument("--format", choices=["netcdf", "zarr"], default="netcdf")
    args = parser.parse_args(argv)
    for path in generate_era5(
        args.out,
        args.years,
        args.hours,
        tuple(args.grid),
        naming=args.naming,
        file_format=args.format,
    ):
        print(path)


if __name__ == "__main__":
    _cli()
