from __future__ import annotations

import calendar
import os
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
from conftest import CLIMATESET_GRID

from lightning_climate.datasets import ClimateSet, climateset, generate_climateset
from lightning_climate.datasets.climateset import (
    CUMULATIVE_CO2,
    HISTORICAL_YEARS,
    annual_emission,
    cell_areas,
    cumulative_co2_emissions,
    input_dir,
)
from lightning_climate.datasets.climateset_generate import emission_pathways

RADIUS = 6.371e6


@pytest.fixture(scope="module")
def root(climateset_co2_root: Path) -> Path:
    return climateset_co2_root


def co2_file(root: Path, scenario: str, year: int) -> Path:
    (path,) = input_dir(root, scenario, "CO2_sum", year).glob("*.nc")
    return path


def direct_total_gt(path: Path, year: int) -> float:
    """GtCO2 of one file, read with netCDF4 and integrated cell by cell, month by month."""
    with netCDF4.Dataset(path) as ds:
        assert ds["CO2_sum"].units == "kg m-2 s-1"
        flux = np.asarray(ds["CO2_sum"][:], dtype=np.float64)  # (month, lat, lon), lat ascending
        lat = np.asarray(ds["lat"][:])
        n_lon = len(ds["lon"])
    step = lat[1] - lat[0]  # the generated grid is regular with centres on both poles
    total = 0.0
    for i, phi in enumerate(lat):
        south, north = max(phi - step / 2, -90.0), min(phi + step / 2, 90.0)
        area = (
            RADIUS**2
            * (2 * np.pi / n_lon)
            * (np.sin(np.radians(north)) - np.sin(np.radians(south)))
        )
        for month in range(12):
            seconds = calendar.monthrange(year, month + 1)[1] * 86400.0
            total += flux[month, i].sum() * area * seconds
    return total / 1e12


def test_channel_equals_a_direct_sum_over_the_files(root: Path) -> None:
    ds = ClimateSet(root, scenarios=["ssp245"], years=[2016, 2020], cumulative_co2=True)
    plain = ClimateSet(root, scenarios=["ssp245"], years=[2016, 2020])
    assert ds.input_names == ["BC_sum", "CH4_sum", "CO2_sum", "SO2_sum", CUMULATIVE_CO2]
    history = sum(direct_total_gt(co2_file(root, "historical", y), y) for y in HISTORICAL_YEARS)
    for i, year in enumerate([2016, 2020]):
        expected = history + sum(
            direct_total_gt(co2_file(root, "ssp245", y), y) for y in range(2015, year + 1)
        )
        sample = ds[i]
        channel = sample["x"][:, -1]
        assert sample["x"].shape == (12, 5, *CLIMATESET_GRID)
        assert torch.all(channel == channel[0, 0, 0])  # the same in every month and cell
        assert channel[0, 0, 0].item() == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(sample["x"][:, :4], plain[i]["x"], rtol=0, atol=0)
        # Units check against the RCMIP world totals the generator spread over the grid (Mt/yr):
        # only the 8x12 grid's area discretisation separates the two.
        rcmip = np.cumsum(emission_pathways()[("ssp245", "CO2")])[year - 1850] / 1e3
        assert channel[0, 0, 0].item() == pytest.approx(rcmip, rel=0.015)


def test_monotone_and_historical_prefix(root: Path) -> None:
    years = list(range(2015, 2021))
    ssp126 = cumulative_co2_emissions(root, "ssp126", years)
    ssp585 = cumulative_co2_emissions(root, "ssp585", years)
    history = cumulative_co2_emissions(root, "historical", list(HISTORICAL_YEARS))
    assert list(history) == list(HISTORICAL_YEARS)
    assert np.all(np.diff(list(history.values())) > 0)
    for series in (ssp126, ssp585):
        assert list(series) == years and np.all(np.diff(list(series.values())) > 0)
        # the first SSP year adds its own emissions to the whole historical sum
        first = annual_emission(
            co2_file(root, "ssp126" if series is ssp126 else "ssp585", 2015), "CO2_sum", 2015
        )
        assert series[2015] == pytest.approx(history[2014] + first / 1e12, rel=1e-12)
        assert series[2015] > 2000.0  # GtCO2 emitted 1850-2015 in RCMIP (about 2,100)
    # ssp585 emits more than ssp126 after 2015; they share the historical prefix
    assert ssp585[2020] > ssp126[2020]
    assert ssp585[2015] - ssp126[2015] < 1e-3 * ssp126[2015]
    # the sum of a historical sample stops at its own year
    ds = ClimateSet(root, scenarios=["historical"], years=[2010, 2014], cumulative_co2=True)
    assert ds[0]["x"][0, -1, 0, 0].item() == pytest.approx(history[2010], rel=1e-6)
    assert ds[1]["x"][0, -1, 0, 0].item() == pytest.approx(history[2014], rel=1e-6)


def test_each_file_is_integrated_once_until_it_changes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(path: str | Path, variable: str, year: int) -> float:
        calls.append(year)
        return annual_emission(path, variable, year)

    climateset._annual_co2.cache_clear()
    monkeypatch.setattr(climateset, "annual_emission", counting)
    years = list(range(2015, 2021))
    first = cumulative_co2_emissions(root, "ssp126", years)
    assert len(calls) == len(HISTORICAL_YEARS) + len(years)
    cumulative_co2_emissions(root, "ssp585", years)  # the historical years come from the cache
    assert len(calls) == len(HISTORICAL_YEARS) + 2 * len(years)
    touched = co2_file(root, "historical", 1900)
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cumulative_co2_emissions(root, "ssp126", years) == first
    assert calls[-1] == 1900 and len(calls) == len(HISTORICAL_YEARS) + 2 * len(years) + 1


def test_lazy_cached_subset_and_sequence_views_agree(root: Path) -> None:
    kwargs = {"scenarios": ["ssp126", "ssp585"], "years": [2015, 2018], "cumulative_co2": True}
    lazy = ClimateSet(root, **kwargs)
    cached = ClimateSet(root, **kwargs).load_into_memory()
    last_month = ClimateSet(root, **kwargs, seq_to_seq=False)
    for i in range(len(lazy)):
        torch.testing.assert_close(lazy[i]["x"], cached[i]["x"], rtol=0, atol=0)
        torch.testing.assert_close(lazy[i]["x"], last_month[i]["x"], rtol=0, atol=0)
        key = lazy.keys[i]
        assert lazy[i]["x"][5, -1, 3, 7].item() == pytest.approx(
            lazy.cumulative[(key.scenario, key.year)], rel=1e-6
        )
    sub = lazy.subset([3, 0])
    torch.testing.assert_close(sub[0]["x"], lazy[3]["x"], rtol=0, atol=0)


def test_missing_years_wrong_units_and_scenarios_raise(tmp_path: Path) -> None:
    generate_climateset(
        tmp_path, scenarios=["ssp245"], years=[2015, 2016, 2018], grid_shape=(4, 6), progress=False
    )
    generate_climateset(
        tmp_path,
        scenarios=["historical"],
        years=HISTORICAL_YEARS,
        grid_shape=(4, 6),
        in_vars=["CO2_sum"],
        out_vars=[],
        progress=False,
    )
    for year in [*range(1900, 1911), 1950]:
        shutil.rmtree(input_dir(tmp_path, "historical", "CO2_sum", year))
    ClimateSet(tmp_path, scenarios=["ssp245"], years=[2018])  # default off needs no history
    with pytest.raises(FileNotFoundError) as info:
        ClimateSet(tmp_path, scenarios=["ssp245"], years=[2018], cumulative_co2=True)
    message = str(info.value)
    assert "historical 1900-1910, 1950" in message and "ssp245 2017" in message
    assert "generate_climateset" in message and "cumulative_co2=False" in message
    generate_climateset(
        tmp_path,
        scenarios=["historical", "ssp245"],
        years=[*range(1900, 1911), 1950],
        grid_shape=(4, 6),
        in_vars=["CO2_sum"],
        out_vars=[],
        progress=False,
    )
    generate_climateset(
        tmp_path,
        scenarios=["ssp245"],
        years=[2017],
        grid_shape=(4, 6),
        in_vars=["CO2_sum"],
        out_vars=[],
        progress=False,
    )
    ds = ClimateSet(tmp_path, scenarios=["ssp245"], years=[2018], cumulative_co2=True)
    assert ds[0]["x"].shape[1] == 5
    with netCDF4.Dataset(co2_file(tmp_path, "historical", 1851), "a") as nc:
        nc["CO2_sum"].units = "Mt yr-1"
    with pytest.raises(ValueError, match=r"units 'Mt yr-1', expected 'kg m-2 s-1'"):
        cumulative_co2_emissions(tmp_path, "ssp245", [2018])
    with pytest.raises(ValueError, match="Years 2010-2014 are not ssp245 years"):
        cumulative_co2_emissions(tmp_path, "ssp245", range(2010, 2016))
    with pytest.raises(ValueError, match="'historical' and 'ssp\\*' scenarios"):
        cumulative_co2_emissions(tmp_path, "piControl", [2015])


def test_cell_areas_cover_the_sphere() -> None:
    sphere = 4 * np.pi * RADIUS**2
    climateset_lat = -90 + 1.875 / 2 + 1.875 * np.arange(96)  # the published 96 x 144 grid
    for lat, lon in [
        (climateset_lat, 2.5 * np.arange(144)),
        (np.linspace(-90, 90, 8), 30.0 * np.arange(12)),
    ]:
        areas = cell_areas(lat, lon)
        assert areas.shape == (len(lat), len(lon)) and (areas > 0).all()
        assert areas.sum() == pytest.approx(sphere, rel=1e-12)
    with pytest.raises(ValueError, match="longitudes evenly spaced once round the globe"):
        cell_areas(climateset_lat, np.arange(10.0))
