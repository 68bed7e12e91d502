"""Inconsistent ERA5 input is an error that names the files: copies of one time, grids, ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from lightning_climate.datamodules import ERA5DataModule
from lightning_climate.datasets.era5 import ERA5Dataset

DATA = Path(__file__).parents[1] / "data" / "era5"
YEAR = DATA / "generated_cds" / "era5_2000.nc"


def _packed(ds: xr.Dataset) -> dict[str, dict[str, object]]:
    """int16 packing with the file's own scale, as legacy CDS files are written."""
    encoding = {}
    for name in ds.data_vars:
        lo, hi = float(ds[name].min()), float(ds[name].max())
        encoding[name] = {
            "dtype": "int16",
            "scale_factor": (hi - lo) / 65532,
            "add_offset": (hi + lo) / 2,
            "_FillValue": -32767,
        }
    return encoding


def test_overlapping_files_with_equal_copies_are_read_once(tmp_path: Path) -> None:
    src = xr.open_dataset(YEAR).load()
    # two downloads that share March to May, each packed with its own scale and offset
    src.isel(valid_time=slice(0, 5)).to_netcdf(tmp_path / "a.nc", encoding=_packed(src[["t2m"]]))
    later = src.isel(valid_time=slice(2, 9))[["t2m"]]
    later.to_netcdf(tmp_path / "b.nc", encoding=_packed(later))
    ds = ERA5Dataset(tmp_path, ["t2m"], factor=1)
    np.testing.assert_array_equal(ds.times, src.valid_time.values[:9].astype("datetime64[s]"))
    ref = xr.open_dataset(tmp_path / "a.nc")["t2m"].values[3, ::-1].astype(np.float32)
    np.testing.assert_array_equal(ds[3]["hr"][0].numpy(), ref)  # the first file's copy


def test_same_time_with_different_values_names_both_files(tmp_path: Path) -> None:
    src = xr.open_dataset(YEAR).load()
    src.isel(valid_time=slice(0, 5)).to_netcdf(tmp_path / "a.nc")
    other = src.isel(valid_time=slice(4, 7)).copy(deep=True)
    other["t2m"][0, 8, 3] += 0.5  # 2000-04-30 differs at one point by 0.5 K
    other.to_netcdf(tmp_path / "b.nc")
    with pytest.raises(
        ValueError,
        match=r"'t2m' at 2000-04-30.* differs between .*a.nc \(valid_time=4\) and "
        r".*b.nc \(valid_time=0\) \(largest difference 0.5\)",
    ):
        ERA5Dataset(tmp_path, ["t2m", "t"])
    # outside the overlap nothing is compared
    assert len(ERA5Dataset(tmp_path, ["t2m"], time_range=("2000-01-01", "2000-04-29"))) == 4


def test_two_forecasts_disagreeing_on_one_valid_time(tmp_path: Path) -> None:
    lat, lon = np.linspace(90, -90, 5), np.arange(8) * 45.0
    init = np.array(["2023-01-01T06", "2023-01-01T12"], dtype="datetime64[ns]")
    step = np.array([6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")
    values = np.ones((2, 2, 5, 8))
    values[1, 0] = 2.0  # 12 + 6 h ...
    values[0, 1] = 3.0  # ... and 06 + 12 h are both 2023-01-01T18
    ds = xr.Dataset(
        {"tp": (("time", "step", "latitude", "longitude"), values)},
        coords={"time": init, "step": step, "latitude": lat, "longitude": lon},
    )
    ds.to_netcdf(tmp_path / "tp.nc")
    with pytest.raises(
        ValueError, match=r"tp.nc \(time=0, step=1\) and .*tp.nc \(time=1, step=0\)"
    ):
        ERA5Dataset(tmp_path / "tp.nc", ["tp"], factor=1)


@pytest.mark.parametrize(
    ("latitudes", "units", "message"),
    [
        (
            np.r_[90.0, 60.0, 70.0, np.linspace(30, -90, 14)],
            "degrees_north",
            r"not strictly monotonic \(rows 1 and 2 hold 60.0 and 70.0\)",
        ),
        (np.r_[90.0, 90.0, np.linspace(78.75, -90, 15)], "degrees_north", "not strictly monotonic"),
        (
            np.deg2rad(np.linspace(90, -90, 17)),
            "radians",
            "latitude units are 'radians', not degrees",
        ),
        (np.deg2rad(np.linspace(90, -90, 17)), None, "look like radians"),
    ],
)
def test_bad_latitudes(
    tmp_path: Path, latitudes: np.ndarray, units: str | None, message: str
) -> None:
    src = xr.open_dataset(YEAR).load()
    attrs = {} if units is None else {"units": units}
    src.assign_coords(latitude=("latitude", latitudes, attrs)).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match=rf"bad.nc: .*{message}"):
        ERA5Dataset(tmp_path / "bad.nc", ["t2m"])


def test_datamodule_refuses_overlapping_date_ranges() -> None:
    sample = str(DATA / "era5_sample.nc")
    with pytest.raises(
        ValueError,
        match=r"train_range .*'2017-01-01T12'.* and val_range .* overlap \(both include "
        r"2017-01-01T12:00:00\)",
    ):
        ERA5DataModule(
            sample,
            ["t"],
            train_range=("2017-01-01", "2017-01-01T12"),
            val_range=("2017-01-01T12", "2017-01-02"),
        )
    with pytest.raises(ValueError, match=r"val_range .* and test_range .* overlap"):
        ERA5DataModule(
            sample,
            ["t"],
            val_range=("2017-01-02", "2017-01-02T12"),
            test_range=("2017-01-02T06", "2017-01-03"),
        )
    with pytest.raises(ValueError, match=r"test_range .* ends before it starts"):
        ERA5DataModule(sample, ["t"], test_range=("2017-01-03", "2017-01-02"))
    # touching but disjoint ranges are fine, and the datasets share no time
    dm = ERA5DataModule(
        sample,
        ["t"],
        levels=[500],
        train_range=("2017-01-01", "2017-01-01T12"),
        test_range=("2017-01-01T12:00:01", "2017-01-02T12"),
    )
    dm.setup("test")
    assert not set(dm.train_dataset.times.tolist()) & set(dm.test_dataset.times.tolist())
    assert len(dm.test_dataset) == 2 * 5 and torch.isfinite(dm.test_dataset[0]["hr"]).all()
