"""ERA5 variable names: the long names of CDS requests, ARCO-ERA5 and WeatherBench 2, and short names.

ERA5 NetCDF files from the Copernicus Climate Data Store name variables by their ECMWF short
name (``t2m``, ``z``); the CDS request form, Google's ARCO-ERA5 and WeatherBench 2 Zarr stores use
long names (``2m_temperature``, ``geopotential``). The reader speaks short names, so it renames
the long ones it knows; names without an ECMWF short name (e.g. WeatherBench 2's
``total_precipitation_6hr``) keep their long name.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERA5_LONG_NAMES", "short_name", "with_short_names"]

# long name (CDS request / ARCO-ERA5 / WeatherBench 2) -> ECMWF short name (CDS NetCDF variable)
ERA5_LONG_NAMES: dict[str, str] = {
    # single levels
    "2m_temperature": "t2m",
    "2m_dewpoint_temperature": "d2m",
    "skin_temperature": "skt",
    "sea_surface_temperature": "sst",
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "100m_u_component_of_wind": "u100",
    "100m_v_component_of_wind": "v100",
    "mean_sea_level_pressure": "msl",
    "surface_pressure": "sp",
    "total_precipitation": "tp",
    "total_column_water": "tcw",
    "total_column_water_vapour": "tcwv",
    "total_cloud_cover": "tcc",
    "toa_incident_solar_radiation": "tisr",
    "surface_solar_radiation_downwards": "ssrd",
    "boundary_layer_height": "blh",
    "land_sea_mask": "lsm",
    "sea_ice_cover": "siconc",
    # pressure levels
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "vertical_velocity": "w",
    "specific_humidity": "q",
    "relative_humidity": "r",
}


def short_name(name: str) -> str:
    """The ECMWF short name of a long ERA5 name (``"2m_temperature"`` -> ``"t2m"``), else ``name``."""
    return ERA5_LONG_NAMES.get(name, name)


def with_short_names(ds: Any) -> Any:
    """Rename the long-named variables of an xarray Dataset to short names (lazy, no data read).

    A long name is left alone when its short name is already taken in ``ds``, so nothing is
    overwritten.
    """
    rename = {
        long: short
        for long, short in ERA5_LONG_NAMES.items()
        if long in ds.data_vars and short not in ds.variables
    }
    return ds.rename(rename) if rename else ds
