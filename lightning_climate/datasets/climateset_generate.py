"""Generator of a ClimateSet-layout NetCDF tree whose fields behave physically.

Each scenario gets its real global emission pathway (RCMIP v5.1.0 world totals shipped in
``datasets/data/``), spread over the grid with fixed regional patterns and a seasonal cycle, and
written as mass fluxes (kg m-2 s-1) in the fire variants the reader selects. Each climate model
responds to the same forcing with its own sensitivity:

* global warming = TCRE x cumulative CO2 since 1850 + lagged responses to CH4 and BC (warming)
  and SO2 (cooling), scaled by the model's climate sensitivity and aerosol scaling;
* ``tas`` = a latitude-dependent climatology and seasonal cycle (opposite in the two hemispheres)
  + the global warming times a spatial pattern (polar and land amplification, local aerosol
  cooling near SO2 sources) + AR(1) year-to-year variability + weather noise;
* ``pr`` = a climatology with a seasonally migrating ITCZ, scaled by about 2 % per kelvin of local
  warming (the hydrological sensitivity), with log-normal weather noise.

So an emulator trained on ssp126/370/585 can learn a real mapping and be tested on ssp245. Fields
are deterministic in (model, member, scenario, year) and every file is written atomically, so the
generator is idempotent and can be resumed.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lightning_climate.datasets.climateset import (
    INPUT_VARS,
    OUTPUT_VARS,
    fire_spec,
    input_dir,
    output_dir,
)
from lightning_climate.utils import atomic_path, lazy_import

__all__ = [
    "ModelResponse",
    "emission_pathways",
    "generate_climateset",
    "global_warming",
    "model_response",
]

_FIRST_YEAR = 1850
_SECONDS_PER_YEAR = 365.0 * 86400.0
_EARTH_RADIUS = 6.371e6
#: CSV variable and Mt -> kg factor of each generated input (ClimateSet names its fluxes by species).
_CSV_VARIABLES = {"CO2": "Emissions|CO2", "CH4": "Emissions|CH4", "SO2": "Emissions|Sulfur"}
_CSV_VARIABLES["BC"] = "Emissions|BC"
#: share of each species' global total emitted by open burning (all fires) and by agricultural
#: (anthropogenic) fires; rough CEDS/GFED magnitudes.
_FIRE_SHARE = {"BC": (0.35, 0.05), "CH4": (0.05, 0.01), "SO2": (0.02, 0.005), "CO2": (0.0, 0.0)}
#: (lat, lon, width in degrees, weight) of emission source regions per species.
_SOURCES = {
    "CO2": [(40, 265, 12, 1.0), (50, 10, 10, 0.8), (32, 115, 12, 1.6), (22, 78, 9, 0.6)],
    "CH4": [(25, 80, 12, 1.0), (30, 112, 12, 1.0), (0, 20, 15, 0.6), (40, 265, 12, 0.5)],
    "SO2": [(32, 112, 10, 1.8), (23, 80, 8, 0.9), (45, 20, 10, 0.5), (38, 270, 10, 0.5)],
    "BC": [(28, 110, 12, 1.4), (22, 80, 10, 1.0), (5, 20, 15, 0.8)],
}
#: open-burning regions: central Africa, Amazon, south-east Asia, boreal forests.
_FIRE_REGIONS = [(-8, 22, 12, 1.5), (-10, 300, 10, 1.0), (5, 105, 10, 0.6), (60, 110, 12, 0.4)]
#: coarse continents (lat, lon, lat width, lon width) for a land mask used by the warming pattern.
_CONTINENTS = [
    (50, 260, 18, 35),
    (-12, 300, 20, 16),
    (52, 60, 14, 70),
    (8, 20, 22, 18),
    (-25, 135, 10, 16),
    (30, 95, 12, 30),
]


@dataclass(frozen=True)
class ModelResponse:
    """How one climate model responds to forcing (the model-to-model differences)."""

    #: equilibrium climate sensitivity (K per CO2 doubling); scales the whole warming.
    ecs: float
    #: multiplier of the aerosol (SO2) cooling.
    aerosol: float
    #: extra warming towards the poles, as a fraction of the global warming at the pole.
    polar_amplification: float
    #: offset of the model's climatology from the multi-model mean (K).
    bias: float
    #: hydrological sensitivity (fractional precipitation change per K).
    hydro: float
    #: standard deviation of the year-to-year global temperature variability (K).
    variability: float


_KNOWN_MODELS = {
    "NorESM2-LM": ModelResponse(2.5, 1.0, 1.2, -0.5, 0.020, 0.10),
    "MPI-ESM1-2-HR": ModelResponse(3.0, 0.8, 1.0, 0.3, 0.022, 0.12),
    "AWI-CM-1-1-MR": ModelResponse(3.2, 0.9, 1.4, 0.0, 0.021, 0.11),
    "EC-Earth3": ModelResponse(4.3, 1.1, 1.5, -0.2, 0.024, 0.13),
    "FGOALS-f3-L": ModelResponse(3.0, 1.2, 0.9, 1.0, 0.018, 0.10),
    "BCC-CSM2-MR": ModelResponse(3.0, 0.9, 1.1, -1.0, 0.019, 0.12),
    "TaiESM1": ModelResponse(4.3, 1.0, 1.3, 0.6, 0.023, 0.11),
    "CESM2": ModelResponse(5.2, 1.3, 1.6, 0.2, 0.025, 0.12),
}


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def model_response(climate_model: str) -> ModelResponse:
    """Response of a known CMIP6 model (rounded published ECS), or one drawn from its name."""
    if climate_model in _KNOWN_MODELS:
        return _KNOWN_MODELS[climate_model]
    rng = np.random.default_rng(_seed("model", climate_model))
    return ModelResponse(
        ecs=float(rng.uniform(2.3, 5.0)),
        aerosol=float(rng.uniform(0.7, 1.3)),
        polar_amplification=float(rng.uniform(0.8, 1.6)),
        bias=float(rng.normal(0.0, 0.8)),
        hydro=float(rng.uniform(0.017, 0.025)),
        variability=float(rng.uniform(0.08, 0.14)),
    )


@cache
def emission_pathways() -> dict[tuple[str, str], np.ndarray]:
    """(scenario, species) -> global emissions of each year 1850..2100 (Mt/yr) from the CSV.

    Species are ``CO2``, ``CH4``, ``SO2``, ``BC``; ``historical`` is the shared 1850-2014 part.
    """
    table = resources.files("lightning_climate.datasets") / "data"
    with (table / "rcmip_ssp_world_emissions_1850_2100.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_csv_name = {v: k for k, v in _CSV_VARIABLES.items()}
    out: dict[tuple[str, str], np.ndarray] = {}
    for row in rows:
        species = by_csv_name.get(row["Variable"])
        if species is None:
            continue
        years = [k for k in row if k.isdigit()]
        out[(row["Scenario"], species)] = np.array([float(row[y]) for y in years])
    for species in _CSV_VARIABLES:
        out[("historical", species)] = out[("ssp245", species)]
    return out


def _pathway(scenario: str, species: str) -> np.ndarray:
    pathways = emission_pathways()
    if (scenario, species) not in pathways:
        known = sorted({s for s, _ in pathways})
        raise ValueError(f"No emission pathway for scenario {scenario!r}; choose from {known}.")
    return pathways[(scenario, species)]


def _lagged(series: np.ndarray, timescale: float) -> np.ndarray:
    out = np.empty_like(series)
    state = series[0]
    for i, value in enumerate(series):
        state += (value - state) / timescale
        out[i] = state
    return out


def global_warming(scenario: str, climate_model: str) -> np.ndarray:
    """Forced global-mean warming (K, relative to 1850) of each year 1850..2100.

    TCRE 0.45 K per 1000 Gt CO2 scaled by ECS/3; CH4, BC and SO2 act through their emission
    rates above 1850 levels with a 4-year lag (short-lived forcers).
    """
    response = model_response(climate_model)
    co2, ch4 = _pathway(scenario, "CO2"), _pathway(scenario, "CH4")
    so2, bc = _pathway(scenario, "SO2"), _pathway(scenario, "BC")
    cumulative = np.cumsum(co2) / 1e6  # Tt CO2
    short_lived = (
        1.5e-3 * (ch4 - ch4[0]) + 0.02 * (bc - bc[0]) - response.aerosol * 5e-3 * (so2 - so2[0])
    )
    return (response.ecs / 3.0) * (0.45 * cumulative + _lagged(short_lived, 4.0))


def _blobs(lat2d: np.ndarray, lon2d: np.ndarray, regions: Sequence[tuple]) -> np.ndarray:
    out = np.zeros_like(lat2d)
    for lat0, lon0, width, weight in regions:
        dlon = (lon2d - lon0 + 180.0) % 360.0 - 180.0
        out += weight * np.exp(
            -((lat2d - lat0) ** 2 + (dlon * np.cos(np.deg2rad(lat0))) ** 2) / width**2
        )
    return out


class _Grid:
    """Grid geometry and the fixed spatial patterns of the generator."""

    def __init__(self, n_lat: int, n_lon: int) -> None:
        self.lat = np.linspace(-90.0, 90.0, n_lat)
        self.lon = np.arange(n_lon) * (360.0 / n_lon)
        self.lat2d, self.lon2d = np.meshgrid(self.lat, self.lon, indexing="ij")
        coslat = np.cos(np.deg2rad(self.lat2d))
        # Cell areas (m2); pole rows get the area of their half cell so no area is zero.
        dlat, dlon = np.deg2rad(180.0 / max(n_lat - 1, 1)), np.deg2rad(360.0 / n_lon)
        self.area = _EARTH_RADIUS**2 * dlat * dlon * np.maximum(coslat, np.sin(dlat / 4.0))
        land = np.zeros_like(self.lat2d)
        for lat0, lon0, wlat, wlon in _CONTINENTS:
            dl = (self.lon2d - lon0 + 180.0) % 360.0 - 180.0
            land += np.exp(-(((self.lat2d - lat0) / wlat) ** 4 + (dl / wlon) ** 4))
        self.land = np.clip(land, 0.0, 1.0)
        self.sin2 = np.sin(np.deg2rad(self.lat2d)) ** 2

    def mean(self, field: np.ndarray) -> float:
        return float((field * self.area).sum() / self.area.sum())

    def flux_pattern(self, regions: Sequence[tuple]) -> np.ndarray:
        """Pattern whose area integral is 1 (m-2), so pattern x total (kg/s) is a flux."""
        pattern = _blobs(self.lat2d, self.lon2d, regions) + 1e-3
        return pattern / (pattern * self.area).sum()


def _write(
    path: Path, variable: str, values: np.ndarray, grid: _Grid, year: int, calendar: str, units: str
) -> None:
    # netCDF4 (the C library) writes a small file ~10x faster than h5netcdf.
    # fletcher32 checksums every chunk, so a damaged file fails on read instead of giving numbers.
    netcdf4 = lazy_import("netCDF4")
    cftime = lazy_import("cftime")

    time_units = "days since 1850-01-01 00:00:00"
    times = cftime.date2num(
        [cftime.datetime(year, m, 15, calendar=calendar) for m in range(1, 13)],
        time_units,
        calendar,
    )
    with atomic_path(path) as tmp, netcdf4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.createDimension("time", 12)
        ds.createDimension("lat", len(grid.lat))
        ds.createDimension("lon", len(grid.lon))
        t = ds.createVariable("time", "f8", ("time",), fletcher32=True)
        t.units, t.calendar, t[:] = time_units, calendar, np.asarray(times, dtype=np.float64)
        la = ds.createVariable("lat", "f8", ("lat",), fletcher32=True)
        la.units, la.standard_name, la[:] = "degrees_north", "latitude", grid.lat
        lo = ds.createVariable("lon", "f8", ("lon",), fletcher32=True)
        lo.units, lo.standard_name, lo[:] = "degrees_east", "longitude", grid.lon
        v = ds.createVariable(variable, "f4", ("time", "lat", "lon"), fletcher32=True)
        v.units = units
        v[:] = values.astype(np.float32)
        ds.source = "lightning_climate.datasets.generate_climateset (synthetic, RCMIP-driven)"


def _input_field(
    species: str, scenario: str, year: int, fire: str | None, grid: _Grid
) -> np.ndarray:
    total = _pathway(scenario, species)[year - _FIRST_YEAR] * 1e9 / _SECONDS_PER_YEAR  # kg/s
    all_fires, agri = _FIRE_SHARE[species]
    fire_share = {None: 0.0, "no-fires": 0.0, "anthro-fires": agri, "all-fires": all_fires}[fire]
    anthro = (1.0 - all_fires) * total * grid.flux_pattern(_SOURCES[species])
    month = np.arange(12)
    # Heating-season peak in northern winter for anthropogenic sources, dry-season fires.
    seasonal = 1.0 + 0.1 * np.cos(2 * np.pi * month / 12)
    fires = fire_share * total * grid.flux_pattern(_FIRE_REGIONS)
    fire_cycle = 1.0 + 0.8 * np.cos(2 * np.pi * (month - 7) / 12)
    return anthro[None] * seasonal[:, None, None] + fires[None] * fire_cycle[:, None, None]


def _output_years(
    climate_model: str, member: str, scenario: str, years: Sequence[int], grid: _Grid
) -> dict[int, dict[str, np.ndarray]]:
    response = model_response(climate_model)
    warming = global_warming(scenario, climate_model)
    so2 = _pathway(scenario, "SO2")
    so2_pattern = _blobs(grid.lat2d, grid.lon2d, _SOURCES["SO2"])
    so2_pattern /= grid.mean(so2_pattern)
    pattern = 1.0 + 0.5 * grid.land + response.polar_amplification * grid.sin2
    pattern /= grid.mean(pattern)
    rng_ar = np.random.default_rng(_seed("ar1", climate_model, member, scenario))
    # AR(1) internal variability over every year from 1850, so any subset of years is consistent.
    anomaly = np.zeros(len(warming))
    for i in range(1, len(warming)):
        anomaly[i] = 0.6 * anomaly[i - 1] + response.variability * 0.8 * rng_ar.normal()
    month = np.arange(12)[:, None, None]
    lat = grid.lat2d[None]
    climatology = 258.0 + 42.0 * np.cos(np.deg2rad(lat)) ** 2 + response.bias
    seasonal = (
        -(12.0 + 8.0 * grid.land) * np.sin(np.deg2rad(lat)) * np.cos(2 * np.pi * (month + 0.5) / 12)
    )
    itcz = 6.0 * np.sin(2 * np.pi * (month - 3.0) / 12)
    pr_clim = 1.2e-5 + 7e-5 * np.exp(-(((lat - itcz) / 9.0) ** 2))
    pr_clim = pr_clim + 3e-5 * np.exp(-(((np.abs(lat) - 50.0) / 12.0) ** 2))
    out: dict[int, dict[str, np.ndarray]] = {}
    for year in years:
        i = year - _FIRST_YEAR
        rng = np.random.default_rng(_seed("weather", climate_model, member, scenario, year))
        aerosol = response.aerosol * 2e-3 * (so2[i] - so2[0]) * so2_pattern
        local = (warming[i] + anomaly[i]) * pattern - aerosol
        noise = rng.normal(0.0, 1.0, (12, *grid.lat2d.shape)) * (0.4 + 0.8 * grid.sin2)
        tas = climatology + seasonal + local[None] + noise
        pr_noise = np.exp(rng.normal(0.0, 0.25, tas.shape) - 0.25**2 / 2)
        pr = pr_clim * np.clip(1.0 + response.hydro * local[None], 0.2, None) * pr_noise
        out[year] = {"tas": tas, "pr": pr}
    return out


_OUTPUT_UNITS = {"tas": "K", "pr": "kg m-2 s-1"}


def generate_climateset(
    root: str | Path,
    climate_models: Sequence[str] = ("NorESM2-LM",),
    scenarios: Sequence[str] = ("ssp126", "ssp245", "ssp370", "ssp585"),
    years: Sequence[int] = tuple(range(2015, 2101)),
    members: Sequence[str] = ("r1i1p1f1",),
    grid_shape: tuple[int, int] = (96, 144),
    in_vars: Sequence[str] = INPUT_VARS,
    out_vars: Sequence[str] = OUTPUT_VARS,
    resolution: str = "250_km",
    progress: bool = True,
) -> Path:
    """Write a ClimateSet-layout tree under ``root``; existing files are kept (idempotent).

    Inputs are written once per scenario and fire variant needed by ``climate_models``; outputs
    (``tas``, ``pr``) once per model, member and scenario. Years must lie in 1850-2100, and
    ``historical`` years in 1850-2014.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    n_lat, n_lon = grid_shape
    if n_lat < 2 or n_lon < 2:
        raise ValueError(f"grid_shape must be at least (2, 2), got {grid_shape}.")
    years = [int(y) for y in years]
    if min(years) < _FIRST_YEAR or max(years) > 2100:
        raise ValueError(
            f"years must lie in 1850..2100 (the emission table), got {min(years)}..{max(years)}."
        )
    if "historical" in scenarios and max(years) > 2014:
        raise ValueError(
            f"historical years end in 2014, got up to {max(years)}; generate it separately."
        )
    unknown = [v for v in out_vars if v not in _OUTPUT_UNITS] + [
        v for v in in_vars if v not in INPUT_VARS
    ]
    if unknown:
        raise ValueError(
            f"The generator cannot write {unknown}; it knows {INPUT_VARS + OUTPUT_VARS}."
        )
    root = Path(root)
    grid = _Grid(n_lat, n_lon)
    jobs: list[tuple[str, tuple]] = []
    for scenario in scenarios:
        for var in in_vars:
            fires = sorted({fire_spec(m, scenario, var) or "" for m in climate_models})
            jobs.extend(("in", (scenario, var, fire or None)) for fire in fires)
        jobs.extend(("out", (m, member, scenario)) for m in climate_models for member in members)
    bar = tqdm(
        total=len(jobs) * len(years), desc="ClimateSet files", disable=not progress, unit="yr"
    )
    for kind, args in jobs:
        if kind == "in":
            scenario, var, fire = args
            species = var.removesuffix("_sum")
            for year in years:
                tag = f"{var}_{fire}" if fire else var
                path = input_dir(root, scenario, var, year, resolution) / (
                    f"input4mips_{scenario}_{tag}_{resolution}_mon_gn_{year}.nc"
                )
                if not path.exists():
                    field = _input_field(species, scenario, year, fire, grid)
                    _write(path, var, field, grid, year, "standard", "kg m-2 s-1")
                bar.update()
            continue
        model, member, scenario = args
        todo = [
            y
            for y in years
            if not all(
                (
                    output_dir(root, model, member, scenario, v, y, resolution)
                    / _out_name(model, member, scenario, v, y, resolution)
                ).exists()
                for v in out_vars
            )
        ]
        fields = _output_years(model, member, scenario, todo, grid) if todo else {}
        for year in years:
            for var in out_vars:
                path = output_dir(root, model, member, scenario, var, year, resolution) / _out_name(
                    model, member, scenario, var, year, resolution
                )
                if year in fields and not path.exists():
                    _write(path, var, fields[year][var], grid, year, "noleap", _OUTPUT_UNITS[var])
            bar.update()
    bar.close()
    return root


def _out_name(model: str, member: str, scenario: str, var: str, year: int, resolution: str) -> str:
    return f"CMIP6_{model}_{member}_{scenario}_{var}_{resolution}_mon_gn_{year}.nc"
