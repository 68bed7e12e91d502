"""Lazy, indexed reader of the published ClimateSet layout (Kaltenborn et al., NeurIPS 2023 D&B).

On-disk layout (one NetCDF file per variable and year, 12 monthly fields on a lat-lon grid)::

    <root>/outputs/CMIP6/<climate_model>/<member>/<scenario>/<tas|pr>/250_km/mon/<year>/*.nc
    <root>/inputs/input4mips/<scenario>/<BC|CH4|CO2|SO2>_sum/250_km/mon/<year>/**/*.nc

``BC_sum``, ``CH4_sum`` and ``SO2_sum`` exist in several fire variants (``no-fires``,
``anthro-fires``, ``all-fires``) told apart by a file-name substring; which one a climate model was
forced with is in :data:`FIRE_SPECS`. ``CO2_sum`` has no open-burning component.

A sample is one calendar year: its index maps deterministically to (climate model, member,
scenario, year) and thus to one file per variable, which is opened, read and closed inside
``__getitem__``. No file handle lives on the dataset, so it is safe under forked DataLoader workers
and DDP (netCDF/HDF5 handles are not fork-safe, pydata/xarray #4100), and memory does not grow with
the number of years or models (:meth:`ClimateSet.load_into_memory` trades that for speed on small
data). Inputs and outputs are aligned by (year, month), not by timestamps, because Input4MIPs and
CMIP6 files use different calendars.

With ``cumulative_co2=True`` each sample gets one more input channel: the global CO2 emitted from
the first historical year (1850) to the end of the sample's year, in GtCO2, the quantity warming
follows (TCRE) and which one year of emission maps does not carry. It is integrated once, in
``__init__``, from the ``CO2_sum`` flux maps (kg m-2 s-1) of every year: historical 1850-2014,
then the sample's SSP from 2015, whatever years the split itself uses.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_climate.datasets.integrity import check_plausible
from lightning_climate.utils import lazy_import

__all__ = [
    "CUMULATIVE_CO2",
    "FIRE_SPECS",
    "HISTORICAL_YEARS",
    "INPUT_VARS",
    "OUTPUT_VARS",
    "ClimateSet",
    "MonthlyField",
    "SampleKey",
    "annual_emission",
    "cell_areas",
    "cumulative_co2_emissions",
    "fire_spec",
    "input_dir",
    "output_dir",
    "read_monthly_field",
]

#: Input4MIPs forcings of the benchmark, summed over sectors, in kg m-2 s-1.
INPUT_VARS: tuple[str, ...] = ("BC_sum", "CH4_sum", "CO2_sum", "SO2_sum")
#: CMIP6 outputs of the benchmark: near-surface air temperature (K), precipitation (kg m-2 s-1).
OUTPUT_VARS: tuple[str, ...] = ("tas", "pr")
_NO_FIRES = ("no-fires", "no-fires")
_ANTHRO = ("anthro-fires", "anthro-fires")
_ANTHRO_THEN_ALL = ("anthro-fires", "all-fires")
#: Climate model -> (historical, ssp) fire variant of the forcings it was run with: upstream's
#: ``OPENBURNING_MODEL_MAPPING`` (emulator/src/data/constants.py), whose "other" entry
#: (anthro-fires, anthro-fires) is written out for each of the 21 models of the published release.
#: Upstream spells MRI-ESM2-0 "MRI-ESM-2.0", a name no released folder has, so upstream's loader
#: actually gives MRI-ESM2-0 the "other" variant; both spellings map to the intended one here.
#: CNRM-ESM2-1 and MPI-ESM1-2-LR are in upstream's mapping but not in the release.
FIRE_SPECS: dict[str, tuple[str, str]] = {
    "AWI-CM-1-1-MR": _ANTHRO,
    "BCC-CSM2-MR": _ANTHRO,
    "CAMS-CSM1-0": _ANTHRO,
    "CAS-ESM2-0": _ANTHRO,
    "CESM2": _ANTHRO_THEN_ALL,
    "CESM2-WACCM": _NO_FIRES,
    "CMCC-CM2-SR5": _ANTHRO,
    "CMCC-ESM2": _NO_FIRES,
    "CNRM-CM6-1-HR": _ANTHRO,
    "CNRM-ESM2-1": _ANTHRO,
    "EC-Earth3": _ANTHRO,
    "EC-Earth3-Veg": _ANTHRO,
    "EC-Earth3-Veg-LR": _ANTHRO,
    "FGOALS-f3-L": _ANTHRO,
    "GFDL-ESM4": _NO_FIRES,
    "INM-CM4-8": _ANTHRO,
    "INM-CM5-0": _ANTHRO,
    "MPI-ESM1-2-HR": _ANTHRO,
    "MPI-ESM1-2-LR": _ANTHRO,
    "MRI-ESM2-0": _ANTHRO_THEN_ALL,
    "MRI-ESM-2.0": _ANTHRO_THEN_ALL,
    "NorESM2-LM": _NO_FIRES,
    "NorESM2-MM": _NO_FIRES,
    "TaiESM1": _ANTHRO_THEN_ALL,
}
#: Variant of any other model (upstream's "other" entry).
_DEFAULT_FIRE_SPEC = _ANTHRO
#: Variables without a fire variant (no open-burning component).
_NO_FIRE_VARS = frozenset({"CO2_sum"})

#: Years of the historical experiment, whose emissions every SSP continues from 2015.
HISTORICAL_YEARS: range = range(1850, 2015)
#: Name of the optional cumulative-emission input channel (GtCO2 since 1850, see ``cumulative_co2``).
CUMULATIVE_CO2 = "CO2_cumulative"
_CO2_VAR = "CO2_sum"
_FLUX_UNITS = "kg m-2 s-1"
_EARTH_RADIUS = 6.371e6  # m, the mean radius CMIP6 grids use for cell areas

_LAT_NAMES = ("lat", "latitude")
_LON_NAMES = ("lon", "longitude")
_TIME_NAMES = ("time", "valid_time")


def fire_spec(climate_model: str, scenario: str, variable: str) -> str | None:
    """File-name substring of the fire variant of ``variable`` forcing ``climate_model``.

    Returns ``None`` for variables that have a single variant (``CO2_sum``) and for outputs.
    A model not in :data:`FIRE_SPECS` gets upstream's default (anthro-fires) with a warning; add
    it to :data:`FIRE_SPECS` to choose another.
    """
    if variable in _NO_FIRE_VARS or variable not in INPUT_VARS:
        return None
    if climate_model not in FIRE_SPECS:
        _warn_unknown_model(climate_model)
    historical, ssp = FIRE_SPECS.get(climate_model, _DEFAULT_FIRE_SPEC)
    return historical if scenario == "historical" else ssp


@functools.cache
def _warn_unknown_model(climate_model: str) -> None:
    """Warn once per model that its fire variant is upstream's default, not a known one."""
    warnings.warn(
        f"Climate model {climate_model!r} is not in ClimateSet's fire-variant table (FIRE_SPECS); "
        f"its BC/CH4/SO2 forcings use upstream's default {_DEFAULT_FIRE_SPEC} "
        "(historical, ssp). If it was run with other open-burning emissions, set "
        "lightning_climate.datasets.climateset.FIRE_SPECS[model] = (historical, ssp).",
        stacklevel=3,
    )


def output_dir(
    root: str | Path,
    climate_model: str,
    member: str,
    scenario: str,
    variable: str,
    year: int,
    resolution: str = "250_km",
) -> Path:
    """Folder of one year of a CMIP6 output variable in the ClimateSet layout."""
    return (
        (Path(root) / "outputs" / "CMIP6" / climate_model / member / scenario / variable)
        / resolution
        / "mon"
        / str(year)
    )


def input_dir(
    root: str | Path, scenario: str, variable: str, year: int, resolution: str = "250_km"
) -> Path:
    """Folder of one year of an Input4MIPs forcing in the ClimateSet layout."""
    return (
        Path(root) / "inputs" / "input4mips" / scenario / variable / resolution / "mon" / str(year)
    )


@dataclass(frozen=True)
class SampleKey:
    """What one sample is: a calendar year of one member of one climate model in one scenario."""

    model_id: int
    climate_model: str
    member: str
    scenario: str
    year: int


@dataclass
class MonthlyField:
    """One year of one variable read from a file, on a (month, lat, lon) grid, latitude ascending."""

    values: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    calendar: str
    #: the variable's ``units`` attribute ("" when the file has none).
    units: str = ""


def _pick(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    for name in candidates:
        if name in names:
            return name
    return None


def read_monthly_field(path: str | Path, variable: str, year: int) -> MonthlyField:
    """Read the 12 monthly fields of ``variable`` for ``year`` from one NetCDF file.

    Dimensions are found by name (``lat``/``latitude``, ``lon``/``longitude``,
    ``time``/``valid_time``), never by size, and the result is (month, lat, lon) with latitude
    ascending. If the file has no variable named ``variable``, its single gridded variable is used
    (Input4MIPs files name theirs after the sector, e.g. ``BC_em_anthro``).

    Raises:
        ValueError: naming ``path`` if the variable or a dimension is missing, the time axis is not
            the 12 months of ``year`` in order, or the field holds NaN or fill values.
    """
    netCDF4 = lazy_import("netCDF4")
    cftime = lazy_import("cftime")
    with netCDF4.Dataset(path, "r") as ds:
        gridded = [
            name
            for name, var in ds.variables.items()
            if _pick(var.dimensions, _LAT_NAMES) and _pick(var.dimensions, _LON_NAMES)
            if len(var.dimensions) == 3
        ]
        name = variable if variable in ds.variables else None
        if name is None and len(gridded) == 1:
            name = gridded[0]
        if name is None:
            raise ValueError(
                f"{path}: no variable {variable!r} and not exactly one (time, lat, lon) variable "
                f"to use instead (found {gridded}). Rename the data variable to {variable!r}."
            )
        var = ds.variables[name]
        dims = var.dimensions
        lat_dim, lon_dim, time_dim = (
            _pick(dims, _LAT_NAMES),
            _pick(dims, _LON_NAMES),
            _pick(dims, _TIME_NAMES),
        )
        if lat_dim is None or lon_dim is None or time_dim is None or len(dims) != 3:
            raise ValueError(
                f"{path}: variable {name!r} has dimensions {dims}; expected (time, lat, lon) named "
                f"one of {_TIME_NAMES}, {_LAT_NAMES}, {_LON_NAMES}."
            )
        units_attr = str(getattr(var, "units", ""))
        values = np.ma.filled(_read_variable(path, var).astype(np.float32), np.nan)
        if (np.abs(values) >= _FILL_THRESHOLD).any():
            count = int((np.abs(values) >= _FILL_THRESHOLD).sum())
            raise ValueError(
                f"{path}: {count} values of {name!r} are >= {_FILL_THRESHOLD:g} in magnitude, fill "
                f"values (CMIP6 writes 1e20) that the variable does not declare with a `_FillValue` "
                f"or `missing_value` attribute, so they would be read as data. Declare it (e.g. "
                f"`ncatted -a _FillValue,{name},o,f,1e20 {Path(path).name}`) and fill the masked "
                f"cells, or use a file without gaps."
            )
        values = np.transpose(
            values, [dims.index(time_dim), dims.index(lat_dim), dims.index(lon_dim)]
        )
        lat = np.asarray(ds.variables[lat_dim][:], dtype=np.float64)
        lon = np.asarray(ds.variables[lon_dim][:], dtype=np.float64)
        time_var = ds.variables[time_dim]
        units = getattr(time_var, "units", None)
        calendar = getattr(time_var, "calendar", "standard")
        if units is None:
            raise ValueError(f"{path}: time variable {time_dim!r} has no `units` attribute.")
        dates = cftime.num2date(np.asarray(time_var[:]), units, calendar)
    months = [(d.year, d.month) for d in np.atleast_1d(dates)]
    if months != [(year, m) for m in range(1, 13)]:
        raise ValueError(
            f"{path}: expected the 12 months of {year} in order, found (year, month) = {months}. "
            "Each yearly file must hold exactly January..December of its folder's year."
        )
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(
            f"{path}: {bad} NaN or fill values in {name!r}. Fill or mask them before training "
            "(e.g. regrid with an extrapolating method) so the loss stays finite."
        )
    if lat[0] > lat[-1]:
        lat, values = lat[::-1].copy(), values[:, ::-1].copy()
    return MonthlyField(
        values=np.ascontiguousarray(values),
        lat=lat,
        lon=lon,
        calendar=str(calendar),
        units=units_attr,
    )


#: Magnitude from which a value is a fill value, never data (CMIP6: 1e20; netCDF default 9.97e36).
_FILL_THRESHOLD = 1e19


def _read_variable(path: str | Path, var: Any) -> np.ma.MaskedArray:
    """``var[:]``, with a checksum or HDF5 read failure reported as damage to ``path``."""
    try:
        return var[:]
    except RuntimeError as err:
        checksummed = bool(var.filters().get("fletcher32")) if var.filters() else False
        why = (
            "its fletcher32 checksum does not match: the file is damaged"
            if checksummed
            else "the file is damaged or truncated"
        )
        raise ValueError(
            f"{path}: reading {var.name!r} failed ({err}); {why}. Download it again (and check it "
            "with `python -m lightning_climate.datasets.integrity MANIFEST`), or regenerate it."
        ) from err


def _find_file(folder: Path, substring: str | None, fix: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"Missing folder {folder}. {fix}")
    files = sorted(folder.rglob("*.nc"))
    if substring is not None:
        files = [f for f in files if substring in f.name]
    if len(files) != 1:
        what = f"*.nc file containing {substring!r}" if substring else "*.nc file"
        raise FileNotFoundError(
            f"Expected exactly one {what} under {folder}, found {[f.name for f in files]}. {fix}"
        )
    return files[0]


def cell_areas(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Areas (m2) of the (lat, lon) cells of a global grid, cell edges halfway between centres.

    The outermost latitude edges lie half a spacing beyond the first and last centres, clipped to
    +-90, so a grid whose centres sit on the poles gets half cells there; areas sum to 4 pi R^2
    on grids that reach the poles.

    Raises:
        ValueError: if there are fewer than 2 latitudes or longitudes, latitudes are not strictly
            ascending, or the longitudes are not evenly spaced once round the globe.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if len(lat) < 2 or len(lon) < 2 or (np.diff(lat) <= 0).any():
        raise ValueError(
            f"cell_areas needs >= 2 ascending latitudes and >= 2 longitudes, got {lat}, {lon}."
        )
    edges = np.concatenate(
        [[1.5 * lat[0] - 0.5 * lat[1]], (lat[1:] + lat[:-1]) / 2, [1.5 * lat[-1] - 0.5 * lat[-2]]]
    )
    bands = np.diff(np.sin(np.deg2rad(np.clip(edges, -90.0, 90.0))))
    gaps = np.diff(np.append(lon, lon[0] + 360.0))
    if not np.allclose(gaps, 360.0 / len(lon), rtol=1e-3):
        raise ValueError(
            "A global total needs longitudes evenly spaced once round the globe; got "
            f"{lon[0]:.3f}..{lon[-1]:.3f} with steps {np.unique(np.round(gaps, 6))}."
        )
    widths = np.full(len(lon), np.deg2rad(360.0 / len(lon)))
    return _EARTH_RADIUS**2 * bands[:, None] * widths[None, :]


def _month_seconds(year: int, calendar: str) -> np.ndarray:
    """Length (s) of each month of ``year`` in ``calendar`` (leap days counted where it has them)."""
    cftime = lazy_import("cftime")
    starts = [cftime.datetime(year, m, 1, calendar=calendar) for m in range(1, 13)]
    starts.append(cftime.datetime(year + 1, 1, 1, calendar=calendar))
    return np.diff(cftime.date2num(starts, "seconds since 1850-01-01", calendar))


def annual_emission(path: str | Path, variable: str, year: int) -> float:
    """Global mass (kg) emitted in ``year``: the monthly flux maps integrated over area and time.

    Each month's flux (kg m-2 s-1) is multiplied by the cell areas of :func:`cell_areas` and by
    the seconds of that month in the file's calendar, then summed.

    Raises:
        ValueError: naming ``path`` if the variable's units are not ``kg m-2 s-1``, plus the
            errors of :func:`read_monthly_field` and :func:`cell_areas`.
    """
    field = read_monthly_field(path, variable, year)
    if " ".join(field.units.split()) != _FLUX_UNITS:
        raise ValueError(
            f"{path}: {variable!r} has units {field.units!r}, expected {_FLUX_UNITS!r} (an "
            "emission flux). Convert the file before asking for cumulative emissions."
        )
    areas = cell_areas(field.lat, field.lon)
    seconds = _month_seconds(year, field.calendar)
    return float(np.einsum("thw,hw,t->", field.values.astype(np.float64), areas, seconds))


@functools.lru_cache(maxsize=8192)
def _annual_co2(path: str, year: int, mtime_ns: int, size: int) -> float:
    """:func:`annual_emission` of ``CO2_sum``, once per file version (``mtime_ns``, ``size``).

    Every SSP repeats the 165 historical years, and each split's dataset sums them again.
    """
    return annual_emission(path, _CO2_VAR, year)


def _year_spans(years: Sequence[int]) -> str:
    """``[1850, 1851, 1852, 1990]`` -> ``"1850-1852, 1990"``."""
    spans: list[list[int]] = []
    for year in sorted(years):
        if spans and year == spans[-1][1] + 1:
            spans[-1][1] = year
        else:
            spans.append([year, year])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def cumulative_co2_emissions(
    root: str | Path, scenario: str, years: Sequence[int], resolution: str = "250_km"
) -> dict[int, float]:
    """Global CO2 emitted from 1850 to the end of each of ``years`` of ``scenario``, in GtCO2.

    Sums :func:`annual_emission` of the ``CO2_sum`` file of every year (1 Gt = 1e12 kg of CO2):
    the historical years 1850-2014, then, for an ``ssp*`` scenario, its own years from 2015. All
    those files are needed, not only those of ``years``.

    Raises:
        ValueError: if ``scenario`` is neither ``historical`` nor ``ssp*``, or a year lies outside
            it (historical 1850-2014, SSPs 2015 on).
        FileNotFoundError: listing every year without a ``CO2_sum`` file, its folder and the fix;
            the sum is never taken over part of the period.
    """
    first, last, start = HISTORICAL_YEARS.start, max(years), HISTORICAL_YEARS.stop
    if scenario == "historical":
        spans = [("historical", range(first, last + 1))]
        outside = [y for y in years if y not in HISTORICAL_YEARS]
    elif scenario.startswith("ssp"):
        spans = [("historical", HISTORICAL_YEARS), (scenario, range(start, last + 1))]
        outside = [y for y in years if y < start]
    else:
        raise ValueError(
            f"Cumulative CO2 is defined for 'historical' and 'ssp*' scenarios (an SSP continues "
            f"the historical emissions from {start}), not {scenario!r}."
        )
    if outside:
        raise ValueError(
            f"Years {_year_spans(outside)} are not {scenario} years (historical is "
            f"{first}-{start - 1}, the SSPs start in {start})."
        )
    root = Path(root)
    missing = {
        name: [
            y for y in span if not any(input_dir(root, name, _CO2_VAR, y, resolution).rglob("*.nc"))
        ]
        for name, span in spans
    }
    if any(missing.values()):
        where = "; ".join(
            f"{name} {_year_spans(ys)} (in {input_dir(root, name, _CO2_VAR, 0, resolution).parent}/<year>/)"
            for name, ys in missing.items()
            if ys
        )
        raise FileNotFoundError(
            f"Cumulative CO2 of {scenario} sums {_CO2_VAR} over every year from {first} to "
            f"{last}, but these years have no file: {where}. Add the Input4MIPs {_CO2_VAR} files of "
            "those years (ClimateSet's inputs hold historical 1850-2014 and each SSP from 2015), or "
            "for generated data run `generate_climateset(root, scenarios=[...], years=..., "
            "in_vars=['CO2_sum'], out_vars=[])` (ClimateSetDataModule(generate=True) does it); "
            "or set cumulative_co2=False."
        )
    total, out = 0.0, {}
    wanted = set(years)
    for name, span in spans:
        for year in span:
            folder = input_dir(root, name, _CO2_VAR, year, resolution)
            path = _find_file(folder, None, "Keep one CO2_sum file per year folder.")
            stat = path.stat()
            total += _annual_co2(str(path), year, stat.st_mtime_ns, stat.st_size) / 1e12
            if name == scenario and year in wanted:
                out[year] = total
    return out


class ClimateSet(Dataset[dict[str, Tensor]]):
    """One sample per (climate model, member, scenario, year), read lazily from the ClimateSet tree.

    Samples are dicts with keys:

    * ``x``: float32 (12, C_in, H, W), the forcings ``in_vars`` of the 12 months, physical units,
      then with ``cumulative_co2`` one more channel (see :attr:`input_names`): the GtCO2 emitted
      from 1850 to the end of the sample's year, the same in every month and cell;
    * ``y``: float32 (12, C_out, H, W) if ``seq_to_seq`` else (1, C_out, H, W) (December only);
    * ``model_id``: int64, position of the sample's climate model in ``climate_models``;
    * ``year``: int64 calendar year; ``index``: int64 position of the sample in this dataset.

    Args:
        root: folder holding ``inputs/`` and ``outputs/``.
        climate_models: CMIP6 model names; their order defines ``model_id``.
        scenarios: e.g. ``("ssp126", "ssp370", "ssp585")`` or ``("historical",)``.
        years: the calendar years to use (each must exist for every variable).
        members: ensemble members used for every model; ``None`` takes the first member folder in
            sorted order (the reference code took ``os.listdir``'s arbitrary first entry).
        in_vars: Input4MIPs variables, any subset of :data:`INPUT_VARS` (or other names on disk).
        out_vars: CMIP6 variables, any subset of :data:`OUTPUT_VARS` (or other names on disk).
        seq_to_seq: map 12 months to 12 months; ``False`` keeps only the last month of ``y``.
        resolution: resolution token of the layout.
        cumulative_co2: append the cumulative CO2 channel, integrated in ``__init__`` from the
            ``CO2_sum`` files of 1850 up to the last of ``years`` (see
            :func:`cumulative_co2_emissions`), whether or not those years are in ``years``.
        historical_years: the years of the ``historical`` scenario (1850-2014), which the SSPs'
            ``years`` (2015-2100) cannot share (upstream's ``train_historical_years``); ``None``
            uses ``years`` for every scenario.
        check_values: refuse values outside the physical range of their variable
            (:data:`~lightning_climate.datasets.integrity.PLAUSIBLE_RANGES`, e.g. ``tas``
            150-350 K, ``pr`` >= 0), checked on every read; catches damaged files and wrong units.

    Raises:
        FileNotFoundError: naming the first missing folder or file and how to create it (with
            ``cumulative_co2``, every missing ``CO2_sum`` year).
        ValueError: naming the file and variable of fill values read as data, implausible values
            or a failed checksum (here for the first sample, in ``__getitem__`` for the others).
    """

    def __init__(
        self,
        root: str | Path,
        climate_models: Sequence[str] = ("NorESM2-LM",),
        scenarios: Sequence[str] = ("ssp126", "ssp370", "ssp585"),
        years: Sequence[int] = tuple(range(2015, 2101)),
        members: Sequence[str] | None = None,
        in_vars: Sequence[str] = INPUT_VARS,
        out_vars: Sequence[str] = OUTPUT_VARS,
        seq_to_seq: bool = True,
        resolution: str = "250_km",
        cumulative_co2: bool = False,
        historical_years: Sequence[int] | None = None,
        check_values: bool = True,
    ) -> None:
        if not climate_models or not scenarios or not len(years) or not out_vars or not in_vars:
            raise ValueError(
                "climate_models, scenarios, years, in_vars and out_vars must all be non-empty; "
                f"got {climate_models}, {scenarios}, {years}, {in_vars}, {out_vars}."
            )
        if historical_years is not None and not len(historical_years):
            raise ValueError("historical_years must be None (use `years`) or non-empty, got [].")
        self.root = Path(root)
        self.climate_models = list(climate_models)
        self.scenarios = list(scenarios)
        self.years = [int(y) for y in years]
        self.historical_years = (
            self.years if historical_years is None else [int(y) for y in historical_years]
        )
        self.check_values = check_values
        self.in_vars = list(in_vars)
        self.out_vars = list(out_vars)
        self.seq_to_seq = seq_to_seq
        self.resolution = resolution
        self.cumulative_co2 = cumulative_co2
        self.fix = (
            f"Check `root` ({self.root}) and the requested models/scenarios/years/variables, or "
            "write a ClimateSet-layout tree with "
            "`lightning_climate.datasets.generate_climateset(root, ...)` (or `generate: true` in "
            "ClimateSetDataModule)."
        )
        keys: list[SampleKey] = []
        for model_id, model in enumerate(self.climate_models):
            for member in self._members(model, members):
                for scenario in self.scenarios:
                    keys.extend(
                        SampleKey(model_id, model, member, scenario, y)
                        for y in self.scenario_years(scenario)
                    )
        self.keys = keys
        # Resolve every file now: a missing year or variable fails here, naming the path.
        self.files = [self._resolve(k) for k in keys]
        self._cache: list[tuple[Tensor, Tensor]] | None = None
        self._reference = read_monthly_field(self.files[0][1][0], self.out_vars[0], keys[0].year)
        self._calendars: dict[str, str] = {}
        for var, path in zip(
            self.in_vars + self.out_vars, [*self.files[0][0], *self.files[0][1]], strict=True
        ):
            self._calendars[var] = read_monthly_field(path, var, keys[0].year).calendar
        #: (scenario, year) -> GtCO2 emitted from 1850 to the end of that year.
        self.cumulative: dict[tuple[str, int], float] = {}
        if cumulative_co2:
            for scenario in self.scenarios:
                values = cumulative_co2_emissions(
                    self.root, scenario, self.scenario_years(scenario), resolution
                )
                self.cumulative.update({(scenario, y): v for y, v in values.items()})

    def scenario_years(self, scenario: str) -> list[int]:
        """Years of ``scenario``: ``historical_years`` for ``historical``, else ``years``."""
        return self.historical_years if scenario == "historical" else self.years

    def _members(self, model: str, members: Sequence[str] | None) -> list[str]:
        model_dir = self.root / "outputs" / "CMIP6" / model
        if members is not None:
            return list(members)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"Missing climate model folder {model_dir}. {self.fix}")
        found = sorted(p.name for p in model_dir.iterdir() if p.is_dir())
        if not found:
            raise FileNotFoundError(f"No ensemble member folder in {model_dir}. {self.fix}")
        return found[:1]

    def _resolve(self, key: SampleKey) -> tuple[list[Path], list[Path]]:
        inputs = [
            _find_file(
                input_dir(self.root, key.scenario, var, key.year, self.resolution),
                fire_spec(key.climate_model, key.scenario, var),
                self.fix,
            )
            for var in self.in_vars
        ]
        outputs = [
            _find_file(
                output_dir(
                    self.root,
                    key.climate_model,
                    key.member,
                    key.scenario,
                    var,
                    key.year,
                    self.resolution,
                ),
                None,
                self.fix,
            )
            for var in self.out_vars
        ]
        return inputs, outputs

    @property
    def input_names(self) -> list[str]:
        """Names of the channels of ``x``: ``in_vars``, then ``CO2_cumulative`` if asked for."""
        return self.in_vars + ([CUMULATIVE_CO2] if self.cumulative_co2 else [])

    @property
    def latitudes(self) -> np.ndarray:
        """Latitudes (degrees, ascending) read from the first output file."""
        return self._reference.lat.copy()

    @property
    def longitudes(self) -> np.ndarray:
        """Longitudes (degrees) read from the first output file."""
        return self._reference.lon.copy()

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) = (number of latitudes, number of longitudes)."""
        return len(self._reference.lat), len(self._reference.lon)

    def subset(self, indices: Sequence[int]) -> ClimateSet:
        """A dataset over the given samples only, re-indexed from 0 (files are not re-resolved)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.keys = [self.keys[i] for i in indices]
        new.files = [self.files[i] for i in indices]
        new._cache = None if self._cache is None else [self._cache[i] for i in indices]
        return new

    def load_into_memory(self) -> ClimateSet:
        """Read every sample once and serve later ones from RAM (for data that fits in memory).

        Costs ``len(self) x 12 x (C_in + C_out) x H x W x 4`` bytes (about 1 GB for the full
        ClimateSet train split of one model); forked DataLoader workers share the arrays.
        Returns ``self``.
        """
        if self._cache is None:
            self._cache = [(s["x"], s["y"]) for s in (self[i] for i in range(len(self)))]
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, path: Path, var: str, year: int) -> np.ndarray:
        field = read_monthly_field(path, var, year)
        ref = self._reference
        if field.values.shape[1:] != (len(ref.lat), len(ref.lon)) or not (
            np.allclose(field.lat, ref.lat, atol=1e-4)
            and np.allclose(field.lon, ref.lon, atol=1e-4)
        ):
            raise ValueError(
                f"{path}: grid {field.values.shape[1:]} (lat {field.lat[0]:.3f}..{field.lat[-1]:.3f},"
                f" lon {field.lon[0]:.3f}..{field.lon[-1]:.3f}) differs from the grid "
                f"{(len(ref.lat), len(ref.lon))} of {self.files[0][1][0]}. Regrid every file to "
                "one grid first."
            )
        if field.calendar != self._calendars[var]:
            raise ValueError(
                f"{path}: calendar {field.calendar!r} differs from {self._calendars[var]!r} used "
                f"by the other {var!r} files. Convert the files of one variable to one calendar."
            )
        if self.check_values:
            check_plausible(field.values, var, path)
        return field.values

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        key = self.keys[index]
        meta = {
            "model_id": torch.tensor(key.model_id, dtype=torch.int64),
            "year": torch.tensor(key.year, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self._cache is not None:
            x_cached, y_cached = self._cache[index]
            return {"x": x_cached, "y": y_cached, **meta}
        in_paths, out_paths = self.files[index]
        x = np.stack(
            [self._read(p, v, key.year) for p, v in zip(in_paths, self.in_vars, strict=True)],
            axis=1,
        )
        y = np.stack(
            [self._read(p, v, key.year) for p, v in zip(out_paths, self.out_vars, strict=True)],
            axis=1,
        )
        if self.cumulative_co2:
            value = self.cumulative[(key.scenario, key.year)]
            x = np.concatenate([x, np.full_like(x[:, :1], value)], axis=1)
        if not self.seq_to_seq:
            y = y[-1:]
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), **meta}

    def __repr__(self) -> str:
        details: dict[str, Any] = {
            "root": str(self.root),
            "climate_models": self.climate_models,
            "scenarios": sorted({k.scenario for k in self.keys}),
            "samples": len(self),
        }
        return f"{type(self).__name__}({details})"
