"""ERA5 Zarr stores behind fsspec URLs, without a local copy, in the WeatherBench 2 / ARCO layouts.

The stores are written here to fsspec's ``memory://`` filesystem (and served over local HTTP) in
the layout of the public ones: long variable names (``2m_temperature``, ``temperature``),
``time`` and ``level`` dimensions, WeatherBench 2's (time, level, longitude, latitude) order
with latitudes ascending, Zarr v2 with consolidated metadata, one time per chunk; ARCO-ERA5's
``valid_time_start``/``valid_time_stop`` attributes with missing values after the stop.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import xarray as xr
from fsspec.implementations.memory import MemoryFileSystem

from lightning_climate.datasets.era5 import ERA5Dataset

YEAR = Path(__file__).parents[1] / "data" / "era5" / "generated_cds" / "era5_2000.nc"
LONG = {
    "t2m": "2m_temperature",
    "tcw": "total_column_water",
    "t": "temperature",
    "z": "geopotential",
}


def _weatherbench_layout() -> xr.Dataset:
    src = xr.open_dataset(YEAR).load()
    wb = src.rename({**LONG, "valid_time": "time", "pressure_level": "level"})
    wb = wb.transpose("time", "level", "longitude", "latitude").isel(latitude=slice(None, None, -1))
    return wb.assign_coords(level=wb.level.astype(np.int64))


def _write(ds: xr.Dataset, store: str) -> None:
    chunks = {name: {"chunks": (1, *ds[name].shape[1:])} for name in ds.data_vars}
    ds.to_zarr(store, mode="w", zarr_format=2, consolidated=True, encoding=chunks)


@pytest.fixture
def memory_store() -> Iterator[str]:
    url = "memory://weatherbench2/datasets/era5/2000-30d-17x32.zarr"
    _write(_weatherbench_layout(), url)
    yield url
    fsspec.filesystem("memory").rm("/weatherbench2", recursive=True)


def test_weatherbench_store_with_long_names_reads_like_the_netcdf(memory_store: str) -> None:
    cloud = ERA5Dataset(memory_store, ["t2m", "temperature"], levels=[500], factor=2)
    local = ERA5Dataset(YEAR, ["t2m", "t"], levels=[500], factor=2)
    assert cloud.files == [memory_store]
    assert cloud.channels == local.channels == ["t2m", "t500"]
    np.testing.assert_array_equal(cloud.times, local.times)
    np.testing.assert_array_equal(cloud.latitudes, local.latitudes)
    for i in (0, 6, 12):
        assert torch.equal(cloud[i]["hr"], local[i]["hr"])
        assert torch.equal(cloud[i]["lat"], local[i]["lat"])


def test_a_sample_reads_only_its_own_chunks(
    memory_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = ERA5Dataset(memory_store, ["2m_temperature", "z"], levels=[850], factor=2)
    reads: list[str] = []
    original = MemoryFileSystem.cat_file

    def counting(self: MemoryFileSystem, path: str, *args: object, **kwargs: object) -> bytes:
        reads.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting)
    ds[0]  # opens the store: metadata and coordinates, once per process
    assert "/weatherbench2/datasets/era5/2000-30d-17x32.zarr/2m_temperature/0.0.0" in reads
    reads.clear()
    ds[7]
    data = sorted(p.split("2000-30d-17x32.zarr/")[1] for p in reads)
    # one chunk per variable at time 7: no other time, no metadata or coordinate read again
    assert data == ["2m_temperature/7.0.0", "geopotential/7.0.0.0"]


def test_arco_store_stops_at_valid_time_stop() -> None:
    url = "memory://gcp-public-data-arco-era5/ar/test-17x32.zarr"
    arco = _weatherbench_layout()
    arco = arco.where(arco.time <= np.datetime64("2000-10-27"))  # NaN after the stop, as ARCO
    arco.attrs.update(valid_time_start="2000-01-01", valid_time_stop="2000-10-27")
    _write(arco, url)
    try:
        ds = ERA5Dataset(url, ["t2m"])
        assert ds.times[-1] == np.datetime64("2000-10-27T00:00:00")
        assert len(ds) == 11 and torch.isfinite(ds[len(ds) - 1]["hr"]).all()
    finally:
        fsspec.filesystem("memory").rm("/gcp-public-data-arco-era5", recursive=True)


def test_zarr_over_http(tmp_path: Path) -> None:
    _write(_weatherbench_layout(), str(tmp_path / "era5.zarr"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/era5.zarr"
        remote = ERA5Dataset(url, ["tcw"], factor=4)
        local = ERA5Dataset(YEAR, ["tcw"], factor=4)
        assert len(remote) == len(local) and torch.equal(remote[3]["lr"], local[3]["lr"])
    finally:
        server.shutdown()
        thread.join()


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed")
def test_missing_cloud_extra_names_the_install() -> None:
    url = "gs://weatherbench2/datasets/era5/1959-2022-6h-64x32_equiangular_conservative.zarr"
    with pytest.raises(
        ModuleNotFoundError, match=r"needs gcsfs: `pip install 'lightning-climate\[cloud\]'"
    ):
        ERA5Dataset(url, ["t2m"])


def test_missing_store_names_the_url() -> None:
    with pytest.raises(FileNotFoundError, match=r"no Zarr store at memory://nowhere/era5.zarr"):
        ERA5Dataset("memory://nowhere/era5.zarr", ["t2m"])
