from __future__ import annotations

import shutil
from pathlib import Path

import cftime
import netCDF4
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_climate.datasets import ClimateSet, generate_climateset
from lightning_climate.datasets.climateset import (
    fire_spec,
    input_dir,
    output_dir,
    read_monthly_field,
)
from lightning_climate.datasets.climateset_generate import emission_pathways, model_response

MODELS = ["NorESM2-LM", "TaiESM1"]
SCENARIOS = ["ssp126", "ssp245", "ssp370", "ssp585"]
YEARS = [2015, 2016, 2099, 2100]
GRID = (12, 16)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("climateset")
    return generate_climateset(path, MODELS, SCENARIOS, YEARS, grid_shape=GRID, progress=False)


def copy_tree(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def global_mean(field: np.ndarray, lat: np.ndarray) -> float:
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(field.shape[-1])
    return float((field * w).sum(axis=(-2, -1)).mean() / w.sum())


def read(root: Path, model: str, scenario: str, var: str, year: int) -> np.ndarray:
    (path,) = output_dir(root, model, "r1i1p1f1", scenario, var, year).glob("*.nc")
    return read_monthly_field(path, var, year).values


def test_layout_and_fire_variants(root: Path) -> None:
    out = output_dir(root, "NorESM2-LM", "r1i1p1f1", "ssp126", "tas", 2015)
    assert out == root / "outputs/CMIP6/NorESM2-LM/r1i1p1f1/ssp126/tas/250_km/mon/2015"
    assert len(list(out.glob("*.nc"))) == 1
    bc = sorted(p.name for p in input_dir(root, "ssp245", "BC_sum", 2015).glob("*.nc"))
    assert bc == [
        "input4mips_ssp245_BC_sum_all-fires_250_km_mon_gn_2015.nc",
        "input4mips_ssp245_BC_sum_no-fires_250_km_mon_gn_2015.nc",
    ]
    assert [p.name for p in input_dir(root, "ssp245", "CO2_sum", 2015).glob("*.nc")] == [
        "input4mips_ssp245_CO2_sum_250_km_mon_gn_2015.nc"
    ]
    assert fire_spec("NorESM2-LM", "ssp245", "BC_sum") == "no-fires"
    assert fire_spec("TaiESM1", "historical", "SO2_sum") == "anthro-fires"
    assert fire_spec("TaiESM1", "ssp245", "SO2_sum") == "all-fires"
    assert fire_spec("TaiESM1", "ssp245", "CO2_sum") is None


def test_samples_shapes_keys_and_order(root: Path) -> None:
    ds = ClimateSet(root, MODELS, ["ssp126", "ssp585"], YEARS)
    assert len(ds) == 2 * 2 * len(YEARS)
    sample = ds[5]
    assert set(sample) == {"x", "y", "model_id", "year", "index"}
    assert sample["x"].shape == (12, 4, *GRID) and sample["x"].dtype == torch.float32
    assert sample["y"].shape == (12, 2, *GRID)
    # model-major, then scenario, then year
    assert (sample["model_id"].item(), sample["year"].item(), sample["index"].item()) == (
        0,
        2016,
        5,
    )
    assert ds[-1]["model_id"].item() == 1 and ds[-1]["index"].item() == len(ds) - 1
    np.testing.assert_allclose(ds.latitudes, np.linspace(-90, 90, GRID[0]))
    one = ClimateSet(
        root, MODELS[:1], ["ssp126"], [2015], seq_to_seq=False, out_vars=["pr"], in_vars=["CO2_sum"]
    )
    s = one[0]
    assert s["y"].shape == (1, 1, *GRID) and s["x"].shape == (12, 1, *GRID)
    torch.testing.assert_close(s["y"][0], ds[0]["y"][11, 1:])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_emissions_follow_the_real_pathways(root: Path) -> None:
    # The grid integral of the CO2 flux scales exactly like the RCMIP world totals.
    def total(scenario: str, year: int) -> float:
        (path,) = input_dir(root, scenario, "CO2_sum", year).glob("*.nc")
        field = read_monthly_field(path, "CO2_sum", year)
        return global_mean(field.values, field.lat)

    table = emission_pathways()
    for scenario in SCENARIOS:
        expected = table[(scenario, "CO2")][2100 - 1850] / table[(scenario, "CO2")][2015 - 1850]
        assert total(scenario, 2100) / total(scenario, 2015) == pytest.approx(expected, rel=1e-4)
    # ssp126 reaches net-negative CO2 emissions by 2100 in RCMIP; the flux field sums below zero.
    assert table[("ssp126", "CO2")][-1] < 0 and total("ssp126", 2100) < 0
    # Open burning makes all-fires BC larger than no-fires BC.
    bc = {}
    for path in input_dir(root, "ssp245", "BC_sum", 2015).glob("*.nc"):
        field = read_monthly_field(path, "BC_sum", 2015)
        bc["all" if "all-fires" in path.name else "no"] = global_mean(field.values, field.lat)
    assert bc["all"] > 1.3 * bc["no"]


def test_temperature_and_precipitation_respond_physically(root: Path) -> None:
    lat = np.linspace(-90, 90, GRID[0])
    tas = {
        (m, s, y): global_mean(read(root, m, s, "tas", y), lat)
        for m in MODELS
        for s in SCENARIOS
        for y in YEARS
    }
    warming = {(m, s): tas[(m, s, 2100)] - tas[(m, s, 2015)] for m in MODELS for s in SCENARIOS}
    for m in MODELS:
        assert (
            warming[(m, "ssp126")]
            < warming[(m, "ssp245")]
            < warming[(m, "ssp370")]
            < warming[(m, "ssp585")]
        )
        assert 2.0 < warming[(m, "ssp585")] < 6.0
    # The higher-sensitivity model warms more (model-to-model differences).
    assert model_response("TaiESM1").ecs > model_response("NorESM2-LM").ecs
    assert warming[("TaiESM1", "ssp585")] > warming[("NorESM2-LM", "ssp585")]
    field = read(root, "NorESM2-LM", "ssp245", "tas", 2015)
    north, south = lat > 30, lat < -30
    assert field[6][north].mean() > field[0][north].mean() + 5  # July warmer than January in the NH
    assert field[0][south].mean() > field[6][south].mean() + 5  # and the opposite in the SH
    assert field[:, np.abs(lat) < 20].mean() > field[:, np.abs(lat) > 60].mean() + 20
    pr = {
        s: global_mean(read(root, "NorESM2-LM", s, "pr", 2100), lat) for s in ("ssp126", "ssp585")
    }
    assert pr["ssp585"] > pr["ssp126"] * 1.02
    assert all((read(root, m, "ssp585", "pr", 2100) > 0).all() for m in MODELS)


def test_generator_is_idempotent_and_deterministic(root: Path, tmp_path: Path) -> None:
    path = next(output_dir(root, "TaiESM1", "r1i1p1f1", "ssp370", "pr", 2099).glob("*.nc"))
    mtime = path.stat().st_mtime_ns
    generate_climateset(root, MODELS, SCENARIOS, YEARS, grid_shape=GRID, progress=False)
    assert path.stat().st_mtime_ns == mtime
    # Any subset of years is consistent with the full run (AR(1) variability runs from 1850).
    other = generate_climateset(
        tmp_path, ["TaiESM1"], ["ssp370"], [2099], grid_shape=GRID, progress=False
    )
    np.testing.assert_array_equal(
        read(other, "TaiESM1", "ssp370", "pr", 2099), read(root, "TaiESM1", "ssp370", "pr", 2099)
    )
    with pytest.raises(ValueError, match="historical years end in 2014"):
        generate_climateset(tmp_path, ["TaiESM1"], ["historical"], [2015], progress=False)
    with pytest.raises(ValueError, match="No emission pathway for scenario 'ssp999'"):
        generate_climateset(tmp_path, ["TaiESM1"], ["ssp999"], [2015], progress=False)


def test_workers_give_the_same_samples(root: Path) -> None:
    ds = ClimateSet(root, MODELS, ["ssp245"], YEARS)
    serial = list(DataLoader(ds, batch_size=3))
    parallel = list(DataLoader(ds, batch_size=3, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_first_member_in_sorted_order(root: Path, tmp_path: Path) -> None:
    tree = copy_tree(root, tmp_path)
    base = tree / "outputs/CMIP6/NorESM2-LM"
    shutil.copytree(base / "r1i1p1f1", base / "r3i1p1f1")
    shutil.move(base / "r1i1p1f1", base / "r2i1p1f1")
    assert ClimateSet(tree, ["NorESM2-LM"], ["ssp126"], [2015]).keys[0].member == "r2i1p1f1"
    both = ClimateSet(tree, ["NorESM2-LM"], ["ssp126"], [2015], members=["r2i1p1f1", "r3i1p1f1"])
    assert [k.member for k in both.keys] == ["r2i1p1f1", "r3i1p1f1"]


def test_missing_year_model_and_variable_name_the_path(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mon/2017.*generate_climateset"):
        ClimateSet(root, MODELS, ["ssp126"], [2016, 2017])
    with pytest.raises(FileNotFoundError, match="CMIP6/CanESM5"):
        ClimateSet(root, ["CanESM5"], ["ssp126"], [2015])
    with pytest.raises(FileNotFoundError, match="ssp126/tasmax/250_km"):
        ClimateSet(root, MODELS, ["ssp126"], [2015], out_vars=["tasmax"])
    with pytest.raises(ValueError, match="non-empty"):
        ClimateSet(root, MODELS, [], [2015])


def _rewrite(path: Path, edit) -> None:
    with netCDF4.Dataset(path, "a") as ds:
        edit(ds)


def to_360_day(ds: netCDF4.Dataset) -> None:
    time = ds["time"]
    dates = [cftime.datetime(2016, m, 15, calendar="360_day") for m in range(1, 13)]
    time[:] = cftime.date2num(dates, time.units, "360_day")
    time.calendar = "360_day"


def test_bad_files_raise_errors_naming_the_file(root: Path, tmp_path: Path) -> None:
    tree = copy_tree(root, tmp_path)
    ds = ClimateSet(tree, ["NorESM2-LM"], ["ssp126"], [2015, 2016])
    tas16 = ds.files[1][1][0]
    pr16 = ds.files[1][1][1]
    co2_16 = ds.files[1][0][2]

    _rewrite(tas16, lambda d: d["tas"].__setitem__((3, 2, 2), np.nan))
    with pytest.raises(ValueError, match=rf"{tas16.name}.*1 NaN"):
        ds[1]
    _rewrite(pr16, to_360_day)
    shutil.copy(ds.files[0][1][0], tas16)  # tas 2016 now holds 2015's months
    with pytest.raises(ValueError, match=rf"{tas16.name}.*12 months of 2016"):
        ds[1]
    _rewrite(co2_16, lambda d: d["lon"].__setitem__(slice(None), d["lon"][:] + 1.0))
    with pytest.raises(ValueError, match=rf"{co2_16.name}.*differs from the grid"):
        ds.__class__(tree, ["NorESM2-LM"], ["ssp126"], [2015, 2016], out_vars=["pr"])[1]
    fresh = ClimateSet(
        tree, ["NorESM2-LM"], ["ssp126"], [2015, 2016], in_vars=["BC_sum"], out_vars=["pr"]
    )
    with pytest.raises(ValueError, match=rf"{pr16.name}.*calendar '360_day' differs from 'noleap'"):
        fresh[1]


def test_descending_latitudes_are_flipped(root: Path, tmp_path: Path) -> None:
    src = next(output_dir(root, "NorESM2-LM", "r1i1p1f1", "ssp126", "tas", 2015).glob("*.nc"))
    ref = read_monthly_field(src, "tas", 2015)
    dst = tmp_path / "flipped.nc"
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(dst, "w") as b:
        for name, dim in a.dimensions.items():
            b.createDimension(name, len(dim))
        for name, var in a.variables.items():
            out = b.createVariable(
                name if name != "tas" else "tas_anthro", var.dtype, var.dimensions
            )
            out.setncatts({k: var.getncattr(k) for k in var.ncattrs()})
            data = var[:]
            out[:] = (
                data[..., ::-1, :] if name == "tas" else (data[::-1] if name == "lat" else data)
            )
    got = read_monthly_field(dst, "tas", 2015)  # the single gridded variable is used
    np.testing.assert_array_equal(got.values, ref.values)
    np.testing.assert_array_equal(got.lat, ref.lat)


def test_in_memory_mode_serves_the_same_samples_from_ram(root: Path, tmp_path: Path) -> None:
    tree = copy_tree(root, tmp_path)
    lazy = ClimateSet(tree, MODELS, ["ssp370"], YEARS)
    expected = [lazy[i] for i in range(len(lazy))]
    cached = ClimateSet(tree, MODELS, ["ssp370"], YEARS).load_into_memory()
    part = cached.subset([5, 2])
    shutil.rmtree(tree / "outputs")  # from now on, only RAM can serve samples
    with pytest.raises(FileNotFoundError):
        lazy[0]
    for i, reference in enumerate(expected):
        sample = cached[i]
        for key in reference:
            torch.testing.assert_close(sample[key], reference[key])
    for position, source in enumerate([5, 2]):
        torch.testing.assert_close(part[position]["y"], expected[source]["y"])
        assert int(part[position]["index"]) == position
