"""ERA5 sources other than plain files: CDS zip archives, GRIB through cfgrib, Zarr behind URLs."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from lightning_climate.datasets import era5_sources
from lightning_climate.datasets.era5 import ERA5Dataset

DATA = Path(__file__).parents[1] / "data" / "era5"
YEAR = DATA / "generated_cds" / "era5_2000.nc"


def _cds_zip(tmp_path: Path, compression: int) -> tuple[Path, Path]:
    """A new-CDS download: one NetCDF per stream and step type, zipped; and the extracted folder.

    The names are those the Climate Data Store gives the members; the instantaneous member is
    NetCDF4 (HDF5), the accumulated one NetCDF3, so both readers of file objects are exercised.
    """
    src = xr.open_dataset(YEAR).load()
    folder = tmp_path / "extracted"
    folder.mkdir()
    src[["t2m", "t"]].to_netcdf(folder / "data_stream-oper_stepType-instant.nc", engine="h5netcdf")
    src[["tcw"]].to_netcdf(folder / "data_stream-oper_stepType-accum.nc", format="NETCDF3_64BIT")
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        for member in sorted(folder.iterdir()):
            zf.write(member, member.name)
    return archive, folder


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_cds_zip_reads_like_the_extracted_files(tmp_path: Path, compression: int) -> None:
    archive, folder = _cds_zip(tmp_path, compression)
    zipped = ERA5Dataset(archive, ["t2m", "tcw", "t"], levels=[500], factor=2)
    plain = ERA5Dataset(folder, ["t2m", "tcw", "t"], levels=[500], factor=2)
    assert zipped.files == [
        f"zip://data_stream-oper_stepType-accum.nc::{archive.resolve()}",
        f"zip://data_stream-oper_stepType-instant.nc::{archive.resolve()}",
    ]
    assert len(zipped) == len(plain) == 13 and zipped.channels == ["t2m", "tcw", "t500"]
    for i in (0, 7, 12):
        assert torch.equal(zipped[i]["hr"], plain[i]["hr"])
    # workers get the dataset pickled, without the open archive
    clone = pickle.loads(pickle.dumps(zipped))
    assert clone._handles == {} and torch.equal(clone[5]["lr"], plain[5]["lr"])


def test_zip_saved_under_a_netcdf_name(tmp_path: Path) -> None:
    # the new CDS zips a multi-file result even when the request named the target "data.nc"
    archive, folder = _cds_zip(tmp_path, zipfile.ZIP_STORED)
    misnamed = tmp_path / "data.nc"
    archive.rename(misnamed)
    ds = ERA5Dataset(misnamed, ["tcw"])
    assert ds.files == [
        f"zip://data_stream-oper_stepType-{kind}.nc::{misnamed.resolve()}"
        for kind in ("accum", "instant")
    ]
    assert torch.equal(ds[4]["hr"], ERA5Dataset(folder, ["tcw"])[4]["hr"])


def test_large_compressed_zip_member_says_how_to_extract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = _cds_zip(tmp_path, zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(era5_sources, "MAX_DEFLATED_MEMBER_BYTES", 1000)
    with pytest.raises(ValueError, match=r"python -m zipfile -e .*download.zip .*download"):
        ERA5Dataset(archive, ["t2m"])
    (tmp_path / "notes.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as zf:
        zf.writestr("README.txt", "no data")
    with pytest.raises(FileNotFoundError, match=r"notes.zip holds no NetCDF .*README.txt"):
        ERA5Dataset(tmp_path / "notes.zip", ["t2m"])


def _write_grib(
    path: Path, messages: list[tuple[np.ndarray, np.datetime64, dict[str, object]]]
) -> None:
    """GRIB 1 messages on the 17 x 32 grid of the generated files, written with ecCodes."""
    eccodes = pytest.importorskip("eccodes")
    grid = xr.open_dataset(YEAR)
    lat, lon = grid.latitude.values, grid.longitude.values
    geometry = {
        "centre": "ecmf",
        "Ni": len(lon),
        "Nj": len(lat),
        "latitudeOfFirstGridPointInDegrees": float(lat[0]),
        "latitudeOfLastGridPointInDegrees": float(lat[-1]),
        "longitudeOfFirstGridPointInDegrees": float(lon[0]),
        "longitudeOfLastGridPointInDegrees": float(lon[-1]),
        "iDirectionIncrementInDegrees": float(lon[1] - lon[0]),
        "jDirectionIncrementInDegrees": float(lat[0] - lat[1]),
        "bitsPerValue": 16,
    }
    with open(path, "wb") as fh:
        for values, time, keys in messages:
            when = time.astype("datetime64[h]").item()
            handle = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib1")
            stamp = {"dataDate": int(when.strftime("%Y%m%d")), "dataTime": when.hour * 100}
            for key, value in {**geometry, **stamp, **keys}.items():
                eccodes.codes_set(handle, key, value)
            eccodes.codes_set_values(handle, values.ravel().astype(np.float64))
            eccodes.codes_write(handle, fh)
            eccodes.codes_release(handle)


def test_grib_through_cfgrib(tmp_path: Path) -> None:
    pytest.importorskip("cfgrib")
    src = xr.open_dataset(YEAR).load()
    times = src.valid_time.values
    _write_grib(
        tmp_path / "t2m.grib",
        [(src.t2m.values[i], times[i], {"shortName": "2t"}) for i in range(3)],
    )
    grib = ERA5Dataset(tmp_path / "t2m.grib", ["t2m"], factor=2)
    plain = ERA5Dataset(YEAR, ["t2m"], factor=2, time_range=(str(times[0]), str(times[2])))
    assert len(grib) == 3 and not list(tmp_path.glob("*.idx"))  # no index files left beside data
    span = float(src.t2m.max() - src.t2m.min())
    for i in range(3):
        torch.testing.assert_close(grib[i]["hr"], plain[i]["hr"], rtol=0, atol=span / 2**16)
    # one message: cfgrib keeps its time as a scalar coordinate
    _write_grib(tmp_path / "one.grib", [(src.t2m.values[1], times[1], {"shortName": "2t"})])
    assert ERA5Dataset(tmp_path / "one.grib", ["t2m"]).times.tolist() == [
        times[1].astype("datetime64[s]")
    ]


def test_grib_with_two_kinds_of_fields_says_how_to_split(tmp_path: Path) -> None:
    pytest.importorskip("cfgrib")
    src = xr.open_dataset(YEAR).load()
    t0 = src.valid_time.values[0]
    accum = {"shortName": "tp", "stepType": "accum", "startStep": 0, "endStep": 6}
    _write_grib(
        tmp_path / "mixed.grib",
        [(src.t2m.values[0], t0, {"shortName": "2t"}), (src.tcw.values[0] / 1e3, t0, accum)],
    )
    with pytest.raises(ValueError, match=r"mixed.grib holds 2 kinds .*'t2m'.*'tp'.*grib_copy"):
        ERA5Dataset(tmp_path / "mixed.grib", ["t2m", "tp"])
    with zipfile.ZipFile(tmp_path / "grib.zip", "w") as zf:
        zf.write(tmp_path / "mixed.grib", "data.grib")
    with pytest.raises(
        ValueError, match=r"data.grib in .*grib.zip is GRIB, .*python -m zipfile -e"
    ):
        ERA5Dataset(tmp_path / "grib.zip", ["t2m"])


def test_a_file_named_twice_is_read_once() -> None:
    ds = ERA5Dataset([YEAR, YEAR.parent], ["t2m"])
    assert ds.files == [YEAR, YEAR.parent / "era5_2001.nc"] and len(ds) == 26


def test_forked_workers_open_their_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = _cds_zip(tmp_path, zipfile.ZIP_DEFLATED)
    ds = ERA5Dataset(archive, ["t2m", "tcw"], factor=2)
    expected = torch.stack([ds[i]["hr"] for i in range(len(ds))])  # the parent opens the archive
    parent = dict(ds._handles)
    # in a forked worker the parent's handles are dropped, not shared
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    torch.testing.assert_close(ds[3]["hr"], expected[3], rtol=0, atol=0)
    assert all(ds._handles[f] is not parent[f] for f in ds._handles)
    monkeypatch.undo()
    loader = DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="fork")
    got = torch.cat([batch["hr"] for batch in loader])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
