from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from lightning_climate.datasets.era5 import ERA5Dataset
from lightning_climate.datasets.era5_generate import generate_era5

DATA = Path(__file__).parents[1] / "data" / "era5"
SAMPLE = DATA / "era5_sample.nc"


def test_real_sample_matches_xarray_reference() -> None:
    ds = ERA5Dataset(SAMPLE, ["t", "z"], levels=[500], factor=2)
    assert ds.channels == ["t500", "z500"]
    assert len(ds) == 4 * 5  # 4 times x 5 members, full fields
    ref = xr.open_dataset(SAMPLE)
    # sample 7 = time 1, member 2; latitudes south to north, cropped from 61 to 60 rows
    sample = ds[7]
    field = ref["t"].isel(time=1, number=2).sel(isobaricInhPa=500).values[::-1][:60]
    np.testing.assert_allclose(sample["hr"][0].numpy(), field, rtol=1e-6)
    coarse = ref["t"].isel(time=1, number=2).sel(isobaricInhPa=500).isel(latitude=slice(1, None))
    coarse = coarse.coarsen(latitude=2, longitude=2).mean().values[::-1]
    np.testing.assert_allclose(sample["lr"][0].numpy(), coarse, rtol=1e-6)
    assert sample["index"].item() == 7 and sample["index"].dtype == torch.int64
    assert sample["time"].item() == int(np.datetime64("2017-01-01T12", "s").astype(np.int64))
    assert ds.latitudes[0] == -90 and ds.latitudes[-1] == 87 and np.all(np.diff(ds.latitudes) > 0)
    np.testing.assert_array_equal(sample["lat"].numpy(), ref["latitude"].values[::-1][:60])
    assert 200 < sample["hr"][0].min() < sample["hr"][0].max() < 320  # temperature in K


def test_cds_and_cfgrib_namings_give_identical_samples() -> None:
    cds = ERA5Dataset(DATA / "generated_cds" / "era5_2000.nc", ["t2m", "t"], factor=4)
    grib = ERA5Dataset(DATA / "generated_cfgrib", ["t2m", "t"], factor=4)
    assert cds.channels == grib.channels == ["t2m", "t850", "t500"]
    assert len(cds) == len(grib) == 13
    for i in (0, 12):
        assert torch.equal(cds[i]["hr"], grib[i]["hr"]) and torch.equal(cds[i]["lr"], grib[i]["lr"])


def test_patches_tile_the_cropped_field() -> None:
    full = ERA5Dataset(DATA / "generated_cds", ["tcw"], factor=4)
    patches = ERA5Dataset(DATA / "generated_cds", ["tcw"], factor=4, patch_size=8)
    assert full[0]["hr"].shape == (1, 16, 32)
    assert len(patches) == len(full) * 2 * 4
    row, col = 1, 2  # patch 1 * 4 + 2 of field 0
    torch.testing.assert_close(patches[6]["hr"], full[0]["hr"][:, 8:16, 16:24], rtol=0, atol=0)
    torch.testing.assert_close(patches[6]["lat"], full[0]["lat"][8:16], rtol=0, atol=0)
    assert (full[0]["hr"] > 0).all()  # total column water is positive
    assert row * 4 + col == 6


def test_time_range_and_multi_year_files() -> None:
    ds = ERA5Dataset(DATA / "generated_cds", ["t2m"], time_range=("2000-06-01", "2001-03-01"))
    years = ds.times.astype("datetime64[Y]").astype(int) + 1970
    assert set(years) == {2000, 2001}
    assert ds.times.min() >= np.datetime64("2000-06-01") and ds.times.max() <= np.datetime64(
        "2001-03-01"
    )


def test_variables_spread_over_files(tmp_path: Path) -> None:
    src = xr.open_dataset(DATA / "generated_cds" / "era5_2000.nc")
    src[["t2m"]].to_netcdf(tmp_path / "t2m.nc")
    src[["tcw"]].to_netcdf(tmp_path / "tcw.nc")
    split = ERA5Dataset(tmp_path, ["tcw", "t2m"], factor=2)
    whole = ERA5Dataset(DATA / "generated_cds" / "era5_2000.nc", ["tcw", "t2m"], factor=2)
    assert len(split) == len(whole)
    assert torch.equal(split[3]["hr"], whole[3]["hr"])


def test_memory_does_not_grow_with_years(tmp_path: Path) -> None:
    files = generate_era5(tmp_path, years=(2001, 2002, 2003), hours=24, grid=(17, 32))
    one_year_bytes = 365 * 17 * 32 * 4 * 6  # all six channels of one year in float32
    tracemalloc.start()
    ds = ERA5Dataset(files, ["t2m", "t", "z"], factor=2)
    samples = [ds[i] for i in (0, 400, 1000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ds) == 365 * 3
    assert peak < one_year_bytes / 2
    assert samples[2]["hr"].shape == (5, 16, 32)


def test_generator_is_seeded_and_idempotent(tmp_path: Path) -> None:
    a = generate_era5(tmp_path / "a", years=(2000,), hours=24 * 30, grid=(17, 32))
    b = generate_era5(tmp_path / "b", years=(2000,), hours=24 * 30, grid=(17, 32))
    xr.testing.assert_identical(xr.open_dataset(a[0]), xr.open_dataset(b[0]))
    stamp = a[0].stat().st_mtime_ns
    generate_era5(tmp_path / "a", years=(2000,), hours=24 * 30, grid=(17, 32))
    assert a[0].stat().st_mtime_ns == stamp
    t = xr.open_dataset(a[0])["t"]
    assert (t.sel(pressure_level=500) < t.sel(pressure_level=850)).all()  # colder aloft


def test_datamodule_statistics_equal_a_direct_pass_over_the_fields() -> None:
    from lightning_climate.datamodules import ERA5DataModule

    ds = ERA5Dataset(DATA / "generated_cds", ["t2m", "tcw"], factor=2)
    stacked = torch.stack([ds.read_field(i) for i in range(ds.num_fields)]).double()
    dm = ERA5DataModule(DATA / "generated_cds", ["t2m", "tcw"], factor=2)
    stats = dm.train_statistics()
    assert dm.channels == ["t2m", "tcw"]
    torch.testing.assert_close(stats["hr_max"], stacked.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_min"], stacked.amin(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_mean"], stacked.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_std"], stacked.std(dim=(0, 2, 3), correction=0))
    assert torch.equal(ds[0]["hr"], ds.read_field(0))  # samples are physical: no normalisation


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"generate|Download"):
        ERA5Dataset(tmp_path / "missing", ["t2m"])
    with pytest.raises(KeyError, match=r"not found .* the files hold \['t', 'z'\]"):
        ERA5Dataset(SAMPLE, ["t2m"])
    with pytest.raises(KeyError, match=r"levels \[700\] .* it has \[850.0, 500.0\]"):
        ERA5Dataset(SAMPLE, ["t"], levels=[700])
    with pytest.raises(ValueError, match="multiple of factor"):
        ERA5Dataset(SAMPLE, ["t"], factor=4, patch_size=10)
    with pytest.raises(ValueError, match="no time step"):
        ERA5Dataset(SAMPLE, ["t"], time_range=("2020-01-01", "2020-02-01"))
    src = xr.open_dataset(DATA / "generated_cds" / "era5_2000.nc").load()
    bad_lat = src.assign_coords(latitude=src.latitude + 100)
    bad_lat.to_netcdf(tmp_path / "lat.nc")
    with pytest.raises(ValueError, match=r"latitudes must lie in \[-90, 90\]"):
        ERA5Dataset(tmp_path / "lat.nc", ["t2m"])
    nan = src.copy(deep=True)
    nan["t2m"][2, 3, 4] = np.nan
    nan.to_netcdf(tmp_path / "nan.nc")
    ds = ERA5Dataset(tmp_path / "nan.nc", ["t2m"])
    assert torch.isfinite(ds[1]["hr"]).all()
    with pytest.raises(ValueError, match=r"NaN or infinite values at time 2000-03-01.*fillna"):
        ds[2]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_zarr_store_reads_like_netcdf(tmp_path: Path) -> None:
    src = xr.open_dataset(DATA / "generated_cds" / "era5_2000.nc")
    src.to_zarr(tmp_path / "era5_2000.zarr", mode="w")
    zarr_ds = ERA5Dataset(tmp_path, ["t2m", "t"], levels=[500], factor=2)
    nc_ds = ERA5Dataset(
        DATA / "generated_cds" / "era5_2000.nc", ["t2m", "t"], levels=[500], factor=2
    )
    assert zarr_ds.files == [tmp_path / "era5_2000.zarr"] and len(zarr_ds) == len(nc_ds)
    assert torch.equal(zarr_ds[4]["hr"], nc_ds[4]["hr"])


def test_generator_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_climate.datasets.era5_generate import _cli

    _cli(["--out", str(tmp_path), "--years", "1999", "--hours", "720", "--naming", "cfgrib"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "era5_1999.nc")
    ds = ERA5Dataset(tmp_path, ["z"], levels=[500], factor=4)
    assert ds.channels == ["z500"] and len(ds) == 13
    assert "isobaricInhPa" in xr.open_dataset(tmp_path / "era5_1999.nc").dims


def test_pickles_without_open_handles_for_workers() -> None:
    import pickle

    ds = ERA5Dataset(SAMPLE, ["t"], levels=[850], factor=2)
    first = ds[5]
    assert ds._handles  # a handle is open in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {}
    assert torch.equal(clone[5]["hr"], first["hr"])
