"""Generated ERA5 files carry checksums, and a damaged chunk is an error naming the file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

from lightning_climate.datasets.era5 import ERA5Dataset
from lightning_climate.datasets.era5_generate import generate_era5

DATA_YEAR = Path(__file__).parents[1] / "data" / "era5" / "generated_cds" / "era5_2000.nc"


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_netcdf_checksum_failure_names_the_file(tmp_path: Path) -> None:
    (path,) = generate_era5(tmp_path, years=(2000,), hours=24 * 30, grid=(17, 32))
    with h5py.File(path) as f:
        assert all(f[name].fletcher32 for name in ("t2m", "tcw", "t", "z"))
        assert f["t"].chunks == (1, 1, 17, 32)  # one field per chunk: a sample reads its own
        info = f["t2m"].id.get_chunk_info_by_coord((3, 0, 0))
        before = f["t2m"][2][::-1]
    _flip(path, info.byte_offset + info.size // 2)
    damaged = ERA5Dataset(path, ["t2m"], factor=1)
    np.testing.assert_array_equal(damaged[2]["hr"][0].numpy(), before)  # other chunks still read
    with pytest.raises(OSError, match=rf"cannot read 't2m' from {path}: .*damaged"):
        damaged[3]


def test_zarr_checksum_failure_names_the_store(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    if not hasattr(zarr.codecs, "Crc32cCodec"):
        pytest.skip("this zarr has no checksum codec")
    (store,) = generate_era5(
        tmp_path, years=(2000,), hours=24 * 30, grid=(17, 32), file_format="zarr"
    )
    assert store.name == "era5_2000.zarr"
    netcdf = generate_era5(tmp_path / "nc", years=(2000,), hours=24 * 30, grid=(17, 32))
    a = ERA5Dataset(store, ["t2m", "t"], factor=1)
    b = ERA5Dataset(netcdf, ["t2m", "t"], factor=1)
    assert torch.equal(a[5]["hr"], b[5]["hr"])
    chunk = store / "t2m" / "c" / "5" / "0" / "0"
    _flip(chunk, chunk.stat().st_size // 2)
    with pytest.raises(OSError, match=rf"cannot read 't2m' from {store}: .*damaged"):
        ERA5Dataset(store, ["t2m"])[5]
    assert np.isfinite(
        xr.open_dataset(store, engine="zarr", consolidated=False)["tcw"].values
    ).all()


def test_implausible_values_name_file_variable_and_units(tmp_path: Path) -> None:
    """Files without checksums: wrong units and flipped exponent bits are caught by range."""
    src = xr.open_dataset(DATA_YEAR).load()
    celsius = src.assign(t2m=src.t2m - 273.15)
    celsius.to_netcdf(tmp_path / "celsius.nc")
    with pytest.raises(
        ValueError, match=r"celsius.nc at 2000-01-01.* 't2m' .* 150..350 K .*convert it to K"
    ):
        ERA5Dataset(tmp_path / "celsius.nc", ["t2m"])[0]
    flipped = src.copy(deep=True)
    flipped["z"][3, 1, 5, 7] = 1e30  # an exponent bit flipped in an unchecksummed file
    flipped.to_netcdf(tmp_path / "flipped.nc")
    ds = ERA5Dataset(tmp_path / "flipped.nc", ["z"], levels=[500])
    assert torch.isfinite(ds[2]["hr"]).all()
    with pytest.raises(ValueError, match=r"flipped.nc at 2000-03-31.*1 values of 'z'"):
        ds[3]
