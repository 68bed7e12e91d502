"""Where ERA5 data lives, and how to open each kind of source lazily with xarray.

Sources are local NetCDF files (``.nc``), Zarr stores (``.zarr``), GRIB files (``.grib``, through
cfgrib), the NetCDF files inside the ``.zip`` archives that the new Climate Data Store delivers,
and Zarr stores behind fsspec URLs (``gs://``, ``s3://``, ``https://``, ``memory://``), such as
Google's ARCO-ERA5 and WeatherBench 2. A local source is a :class:`~pathlib.Path`; a zip member is
the fsspec URL ``zip://<member>::<archive>``; a remote store is its URL.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_climate.datasets.era5_names import with_short_names
from lightning_climate.utils import lazy_import

__all__ = ["OpenSource", "Source", "find_era5_files", "open_era5_source"]

Source = Path | str

_NETCDF = (".nc", ".nc4", ".netcdf")
_GRIB = (".grib", ".grib1", ".grib2", ".grb", ".grb2")
_SUFFIXES = (*_NETCDF, *_GRIB, ".zarr", ".zip")
# compressed zip members are read by decompressing from the start at every backwards seek
MAX_DEFLATED_MEMBER_BYTES = 256 * 2**20
# anonymous access to the public buckets when the user gives no storage_options
_ANONYMOUS = {"gs": {"token": "anon"}, "gcs": {"token": "anon"}, "s3": {"anon": True}}
_FSSPEC_PACKAGES = {
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "s3": "s3fs",
    "http": "aiohttp",
    "https": "aiohttp",
}


def _is_url(item: Any) -> bool:
    return isinstance(item, str) and "://" in item


def _is_zarr_dir(path: Path) -> bool:
    return path.suffix == ".zarr" or any(
        (path / name).exists() for name in ("zarr.json", ".zgroup", ".zmetadata")
    )


def _is_zip(source: Source) -> bool:
    """A zip archive, also one named ``.nc``: the new CDS zips multi-file results whatever the name."""
    if not isinstance(source, Path) or not source.is_file():
        return False
    with open(source, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _zip_members(archive: Path) -> list[str]:
    """The NetCDF/GRIB members of a CDS zip archive, as ``zip://`` URLs."""
    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if i.filename.lower().endswith(_NETCDF + _GRIB)]
        names = [i.filename for i in zf.infolist()]
    if not infos:
        raise FileNotFoundError(
            f"the zip archive {archive} holds no NetCDF or GRIB file (it has {names}); pass the "
            "archive the Climate Data Store delivered, or the extracted files."
        )
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATED_MEMBER_BYTES:
            raise ValueError(
                f"{info.filename} in {archive} is compressed inside the zip and "
                f"{info.file_size / 2**20:.0f} MiB large: reading it in place would decompress "
                "it again at every sample. Extract the archive once, e.g. "
                f"`python -m zipfile -e {archive} {archive.with_suffix('')}`, and pass the folder "
                f"{archive.with_suffix('')} instead."
            )
    return [
        f"zip://{i.filename}::{archive.resolve()}" for i in sorted(infos, key=lambda i: i.filename)
    ]


def find_era5_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Source]:
    """Expand files, directories, glob patterns, zip archives and URLs into sources.

    A directory contributes its ``*.nc``, ``*.zarr``, ``*.grib`` and ``*.zip`` entries (sorted by
    name); a zip archive its NetCDF/GRIB members; a URL is kept as a Zarr store. A source named
    twice is kept once.

    Raises:
        FileNotFoundError: if nothing matches, naming the paths and how to get data.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Source] = []
    for item in items:
        if _is_url(item):
            found.append(str(item).rstrip("/"))
            continue
        p = Path(item)
        if p.is_dir() and not _is_zarr_dir(p):
            found += sorted(c for c in p.iterdir() if c.suffix.lower() in _SUFFIXES)
        elif p.exists():
            found.append(p)
        else:
            found += [Path(m) for m in sorted(glob.glob(str(item)))]
    expanded = [s for src in found for s in (_zip_members(src) if _is_zip(src) else [src])]
    sources = list(dict.fromkeys(expanded))  # in order, each once
    if not sources:
        raise FileNotFoundError(
            f"no ERA5 files (*.nc, *.zarr, *.grib or a CDS *.zip) found at "
            f"{[str(i) for i in items]}. Download them from the Copernicus Climate Data Store, "
            "pass a Zarr URL (e.g. gs://weatherbench2/datasets/era5/...), use the embedded "
            "sample tests/data/era5/era5_sample.nc, or write ERA5-format files with "
            "`python -m lightning_climate.datasets.era5_generate --out <dir>`."
        )
    return sources


@dataclass
class OpenSource:
    """An opened source: the xarray Dataset (short variable names) and what closes it."""

    dataset: Any
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        """Close the dataset and any file or archive under it."""
        self.stack.close()


def _open_zip_member(url: str, stack: contextlib.ExitStack) -> Any:
    xr = lazy_import("xarray")
    member, archive = url.removeprefix("zip://").split("::", 1)
    zf = stack.enter_context(zipfile.ZipFile(archive))
    fh = stack.enter_context(zf.open(member))
    magic = fh.read(4)
    fh.seek(0)
    if magic.startswith(b"\x89HDF"):
        lazy_import("h5netcdf")
        return xr.open_dataset(fh, engine="h5netcdf", chunks=None, cache=False)
    if magic.startswith(b"CDF"):
        return xr.open_dataset(fh, engine="scipy", chunks=None, cache=False)
    if magic.startswith(b"GRIB"):
        raise ValueError(
            f"{member} in {archive} is GRIB, which cfgrib reads only from a file on disk: extract "
            f"the archive (`python -m zipfile -e {archive} <dir>`) and pass the folder."
        )
    raise ValueError(
        f"{member} in {archive} is neither NetCDF4 nor NetCDF3 (first bytes {magic!r}); extract "
        f"it (`python -m zipfile -e {archive} <dir>`) and check the file."
    )


def _open_grib(path: Path, stack: contextlib.ExitStack) -> Any:
    """Open a GRIB file through cfgrib; one holding several kinds of fields is an error."""
    try:
        cfgrib = importlib.import_module("cfgrib")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"reading the GRIB file {path} needs cfgrib: `pip install 'lightning-climate[grib]'`."
        ) from err
    # indexpath="": no .idx files written beside the user's data
    parts = cfgrib.open_datasets(path, backend_kwargs={"indexpath": ""}, chunks=None, cache=False)
    for part in parts:
        stack.callback(part.close)
    if len(parts) != 1:
        kinds = [sorted(map(str, part.data_vars)) for part in parts]
        raise ValueError(
            f"{path} holds {len(parts)} kinds of fields that do not share coordinates ({kinds}; "
            "e.g. instantaneous and accumulated, or surface and pressure levels). Split it into "
            f"one file per kind with ecCodes, `grib_copy {path} '{path.stem}_[stepType]_"
            "[typeOfLevel].grib'`, or download those variables in separate requests."
        )
    return parts[0]


def _open_url(url: str, storage_options: dict[str, Any] | None) -> Any:
    xr = lazy_import("xarray")
    lazy_import("zarr")
    protocol = url.split("://", 1)[0]
    options = _ANONYMOUS.get(protocol, {}) if storage_options is None else storage_options
    try:
        return xr.open_dataset(
            url, engine="zarr", chunks=None, cache=False, storage_options=options
        )
    except ImportError as err:
        package = _FSSPEC_PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        raise ModuleNotFoundError(
            f"reading {url} needs {package}: `pip install 'lightning-climate[cloud]'` "
            f"(or `pip install {package}`)."
        ) from err
    except (FileNotFoundError, KeyError) as err:
        raise FileNotFoundError(
            f"no Zarr store at {url} ({err!r}). Check the URL (e.g. "
            "gs://weatherbench2/datasets/era5/1959-2022-6h-64x32_equiangular_conservative.zarr) "
            "and, for a private bucket, pass storage_options with credentials."
        ) from err


def open_era5_source(source: Source, storage_options: dict[str, Any] | None = None) -> OpenSource:
    """Open one source lazily (no data read) with long variable names renamed to short ones.

    Args:
        source: a local path, a ``zip://member::archive`` URL or a Zarr URL.
        storage_options: fsspec options for URLs; ``None`` means anonymous access for ``gs://``
            (``{"token": "anon"}``) and ``s3://`` (``{"anon": True}``).
    """
    xr = lazy_import("xarray")
    opened = OpenSource(None)
    try:
        if isinstance(source, str) and source.startswith("zip://"):
            ds = _open_zip_member(source, opened.stack)
        elif isinstance(source, str):
            ds = _open_url(source, storage_options)
        elif _is_zarr_dir(source):
            lazy_import("zarr")
            with warnings.catch_warnings():
                # stores without consolidated metadata (as generate_era5 writes them) are fine
                warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
                ds = xr.open_dataset(source, engine="zarr", chunks=None, cache=False)
        elif source.suffix.lower() in _GRIB:
            ds = _open_grib(source, opened.stack)
        else:
            ds = xr.open_dataset(source, chunks=None, cache=False)
    except BaseException:
        opened.close()
        raise
    opened.stack.callback(ds.close)
    opened.dataset = with_short_names(ds)
    return opened
