"""ERA5 layouts of real downloads, written here at small size in the layout of the real files.

- Legacy CDS NetCDF spanning the ERA5/ERA5T boundary: variables (time, expver, latitude,
  longitude), ``expver`` = [1, 5] (int32), each time filled in one experiment and missing
  (``_FillValue``) in the other, values packed as int16 with scale_factor/add_offset.
- New CDS NetCDF: ``expver`` is a string coordinate along ``valid_time`` ('0001'/'0005') and
  ``number`` a scalar coordinate; no combination is needed.
- cfgrib's view of an accumulated field (ERA5 ``tp`` from GRIB): forecasts started at 06 and
  18 UTC (``time``), ``step`` 1-12 h, a 2-D ``valid_time`` coordinate, and NaN in every
  (time, step) cell that the GRIB file holds no message for (the hypercube is padded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from lightning_climate.datasets.era5 import ERA5Dataset

LAT = np.linspace(90, -90, 9)
LON = np.arange(16) * 22.5
COORDS = {
    "latitude": ("latitude", LAT, {"units": "degrees_north"}),
    "longitude": ("longitude", LON, {"units": "degrees_east"}),
}


def _field(hours: np.ndarray) -> np.ndarray:
    """A smooth field per hour (T, 9, 16) whose value identifies its hour."""
    la, lo = np.deg2rad(LAT)[None, :, None], np.deg2rad(LON)[None, None, :]
    h = np.asarray(hours, dtype=np.float64)[:, None, None]
    return 250 + 30 * np.cos(la) ** 2 + 5 * np.sin(lo + h / 7) + 0.1 * h


def _packed(name: str, values: np.ndarray) -> dict[str, dict[str, object]]:
    lo, hi = np.nanmin(values), np.nanmax(values)
    scale = (hi - lo) / 65532
    return {
        name: {
            "dtype": "int16",
            "_FillValue": -32767,
            "scale_factor": scale,
            "add_offset": (hi + lo) / 2,
        }
    }


def _expver_file(path: Path, cut: int, order: tuple[int, int] = (1, 5)) -> xr.Dataset:
    """Legacy CDS file: 8 hourly times, ERA5 (expver 1) before ``cut``, ERA5T (5) from it."""
    times = np.datetime64("2023-01-01T00", "ns") + np.arange(8) * np.timedelta64(1, "h")
    values = np.full((8, 2, 9, 16), np.nan)
    era5, era5t = order.index(1), order.index(5)
    values[:cut, era5] = _field(np.arange(cut))
    values[cut:, era5t] = _field(np.arange(cut, 8))
    ds = xr.Dataset(
        {"t2m": (("time", "expver", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": times, "expver": ("expver", np.array(order, dtype=np.int32)), **COORDS},
    )
    ds.to_netcdf(path, encoding=_packed("t2m", values))
    return ds


def test_expver_combined_as_ecmwf_recommends(tmp_path: Path) -> None:
    written = _expver_file(tmp_path / "mixed.nc", cut=5)
    ds = ERA5Dataset(tmp_path / "mixed.nc", ["t2m"], factor=1)
    assert len(ds) == 8 and ds.channels == ["t2m"]
    # ECMWF's recipe, computed by xarray on the file as read back
    ref = xr.open_dataset(tmp_path / "mixed.nc")["t2m"]
    combined = ref.sel(expver=1).combine_first(ref.sel(expver=5)).values[:, ::-1]
    for i in range(8):
        np.testing.assert_array_equal(ds[i]["hr"][0].numpy(), combined[i].astype(np.float32))
    # and the values are the written ones, up to the int16 packing
    np.testing.assert_allclose(ds[6]["hr"][0].numpy(), written["t2m"][6, 1, ::-1], atol=2e-3)


def test_expver_prefers_era5_over_era5t_whatever_the_order(tmp_path: Path) -> None:
    _expver_file(tmp_path / "a.nc", cut=3, order=(5, 1))
    ref = xr.open_dataset(tmp_path / "a.nc").load()
    # one time present in both experiments with different values: ERA5 (expver 1) wins
    ref["t2m"][1, 0] = ref["t2m"][1, 1] + 1.0
    ref.to_netcdf(tmp_path / "b.nc")
    ds = ERA5Dataset(tmp_path / "b.nc", ["t2m"], factor=1)
    np.testing.assert_array_equal(
        ds[1]["hr"][0].numpy(), ref["t2m"].sel(expver=1)[1].values[::-1].astype(np.float32)
    )


def test_expver_time_missing_in_both_experiments_is_an_error_not_a_crash(tmp_path: Path) -> None:
    written = _expver_file(tmp_path / "a.nc", cut=4)
    written["t2m"][2] = np.nan
    written.to_netcdf(tmp_path / "gap.nc")
    ds = ERA5Dataset(tmp_path / "gap.nc", ["t2m"], factor=1)
    assert torch.isfinite(ds[3]["hr"]).all()
    with pytest.raises(ValueError, match=r"gap.nc has NaN .* at time 2023-01-01T02"):
        ds[2]


def test_new_cds_expver_coordinate_and_scalar_number(tmp_path: Path) -> None:
    src = xr.open_dataset(
        Path(__file__).parents[1] / "data" / "era5" / "generated_cds" / "era5_2000.nc"
    )
    n = src.sizes["valid_time"]
    new = src.assign_coords(
        expver=("valid_time", np.array(["0001"] * (n - 2) + ["0005"] * 2)), number=0
    )
    new.to_netcdf(tmp_path / "new.nc")
    a = ERA5Dataset(tmp_path / "new.nc", ["t2m", "t"], factor=2)
    b = ERA5Dataset(src.encoding["source"], ["t2m", "t"], factor=2)
    assert len(a) == len(b) == n
    assert torch.equal(a[n - 1]["hr"], b[n - 1]["hr"])


def _accumulated_file(path: Path, first: str, last: str) -> np.ndarray:
    """cfgrib layout of an hourly accumulated field whose valid times run from first to last."""
    start, stop = np.datetime64(first, "h"), np.datetime64(last, "h")
    day = start.astype("datetime64[D]")
    init = np.array(
        [day - np.timedelta64(6, "h"), day + np.timedelta64(6, "h"), day + np.timedelta64(18, "h")]
    )
    step = np.arange(1, 13) * np.timedelta64(1, "h")
    valid = init[:, None] + step[None, :]
    hours = (valid - start).astype(int)
    inside = (valid >= start) & (valid <= stop)
    values = np.where(
        inside[..., None, None], _field(hours.ravel()).reshape(3, 12, 9, 16) / 1e3, np.nan
    )
    ds = xr.Dataset(
        {"tp": (("time", "step", "latitude", "longitude"), values, {"units": "m"})},
        coords={
            "time": init.astype("datetime64[ns]"),
            "step": step.astype("timedelta64[ns]"),
            "valid_time": (("time", "step"), valid.astype("datetime64[ns]")),
            **COORDS,
        },
    )
    ds.to_netcdf(path)
    return values


def _instant_file(path: Path, first: str, hours: int) -> None:
    times = np.datetime64(first, "ns") + np.arange(hours) * np.timedelta64(1, "h")
    ds = xr.Dataset(
        {
            "t2m": (
                ("valid_time", "latitude", "longitude"),
                _field(np.arange(hours)),
                {"units": "K"},
            )
        },
        coords={"valid_time": times, **COORDS},
    )
    ds.to_netcdf(path)


def test_forecast_steps_give_valid_times(tmp_path: Path) -> None:
    _accumulated_file(tmp_path / "accum.nc", "2023-01-01T00", "2023-01-01T23")
    _instant_file(tmp_path / "instant.nc", "2023-01-01T00", 24)
    ds = ERA5Dataset(tmp_path, ["t2m", "tp"], factor=1)
    expected = np.datetime64("2023-01-01T00", "s") + np.arange(24) * np.timedelta64(1, "h")
    np.testing.assert_array_equal(ds.times, expected)  # the NaN-padded cells are not samples
    for hour in (0, 6, 7, 18, 23):
        sample = ds[hour]
        assert sample["time"].item() == int(expected[hour].astype(np.int64))
        ref = (_field(np.array([hour]))[0, ::-1] / 1e3).astype(np.float32)
        np.testing.assert_allclose(sample["hr"][1].numpy(), ref, rtol=1e-6)
        np.testing.assert_allclose(sample["hr"][0].numpy(), ref * 1e3, rtol=1e-6)


def test_forecast_steps_without_valid_time_coordinate(tmp_path: Path) -> None:
    _accumulated_file(tmp_path / "a.nc", "2023-01-01T00", "2023-01-01T23")
    ds = xr.open_dataset(tmp_path / "a.nc").drop_vars("valid_time")
    # steps stored as plain numbers in hours, as cfgrib writes them to NetCDF
    ds = ds.assign_coords(step=("step", np.arange(1.0, 13.0), {"units": "hours"}))
    ds.to_netcdf(tmp_path / "b.nc")
    a = ERA5Dataset(tmp_path / "a.nc", ["tp"], factor=1)
    b = ERA5Dataset(tmp_path / "b.nc", ["tp"], factor=1)
    np.testing.assert_array_equal(a.times, b.times)
    assert len(b) == 24 and torch.equal(a[13]["hr"], b[13]["hr"])


def test_scalar_step_shifts_the_valid_time(tmp_path: Path) -> None:
    _instant_file(tmp_path / "x.nc", "2023-01-01T00", 4)
    ds = xr.open_dataset(tmp_path / "x.nc").rename(valid_time="time")
    ds.assign_coords(step=((), 6.0, {"units": "hours"})).to_netcdf(tmp_path / "shifted.nc")
    shifted = ERA5Dataset(tmp_path / "shifted.nc", ["t2m"], factor=1)
    assert shifted.times[0] == np.datetime64("2023-01-01T06")
