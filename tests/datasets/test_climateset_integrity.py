"""ClimateSet files that are damaged, hold undeclared fill values or implausible values."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest

from lightning_climate.datasets import ClimateSet, generate_climateset
from lightning_climate.datasets.climateset import output_dir, read_monthly_field

GRID = (4, 6)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("climateset_integrity")
    return generate_climateset(root, scenarios=["ssp126"], years=[2015, 2016], grid_shape=GRID,
                               progress=False)  # fmt: skip


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "copy"))


def output_file(root: Path, var: str, year: int = 2016) -> Path:
    (path,) = output_dir(root, "NorESM2-LM", "r1i1p1f1", "ssp126", var, year).glob("*.nc")
    return path


def rewrite(path: Path, var: str, values: np.ndarray, **attrs: float) -> None:
    with netCDF4.Dataset(path, "r+") as ds:
        ds.variables[var].set_auto_mask(False)
        ds.variables[var][:] = values
        for name, value in attrs.items():
            ds.variables[var].setncattr(name, value)


def test_undeclared_fill_values_are_an_error(root: Path) -> None:
    path = output_file(root, "tas")
    values = read_monthly_field(path, "tas", 2016).values
    values[3, 1, 2] = 1e20
    rewrite(path, "tas", values)
    data = ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016])
    data[0]  # the undamaged year reads
    with pytest.raises(
        ValueError, match=rf"{path.name}: 1 values of 'tas' are >= 1e\+19.*_FillValue"
    ):
        data[1]


def test_declared_fill_values_are_masked_then_refused(root: Path) -> None:
    path = output_file(root, "pr")
    values = read_monthly_field(path, "pr", 2016).values
    values[0, 0, :2] = 1e20
    rewrite(path, "pr", values, missing_value=np.float32(1e20))
    with pytest.raises(ValueError, match=rf"{path.name}: 2 NaN or fill values in 'pr'"):
        ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016])[1]


def test_values_in_other_units_are_implausible(root: Path) -> None:
    path = output_file(root, "tas")
    kelvin = read_monthly_field(path, "tas", 2016).values
    rewrite(path, "tas", kelvin - 273.15)  # degrees Celsius labelled K
    data = ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016])
    with pytest.raises(ValueError, match=r"'tas' lie outside its plausible range 150\.\.350 K"):
        data[1]
    lenient = ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016], check_values=False)
    np.testing.assert_allclose(lenient[1]["y"][:, 0].numpy(), kelvin - 273.15, rtol=1e-6)


def test_negative_precipitation_is_implausible(root: Path) -> None:
    path = output_file(root, "pr")
    values = read_monthly_field(path, "pr", 2016).values
    values[5, 2, 3] = -1e-5
    rewrite(path, "pr", values)
    with pytest.raises(ValueError, match=rf"{path.name}: 1 values of 'pr' lie outside.*-1e-05"):
        ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016])[1]


def test_generated_files_are_checksummed_and_damage_is_reported(root: Path) -> None:
    path = output_file(root, "tas")
    with h5py.File(path, "r") as file:
        assert file["tas"].fletcher32 and file["lat"].fletcher32
        chunk = file["tas"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset + chunk.size // 2] ^= 0x40  # one flipped bit inside the data
    path.write_bytes(bytes(raw))
    data = ClimateSet(root, scenarios=["ssp126"], years=[2015, 2016])
    with pytest.raises(
        ValueError, match=rf"{path.name}: reading 'tas' failed.*fletcher32 checksum"
    ):
        data[1]
