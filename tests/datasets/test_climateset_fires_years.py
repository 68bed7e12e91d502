"""ClimateSet: each model's fire variant of the forcings, and separate historical and SSP years."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from lightning_climate.datamodules import ClimateSetDataModule
from lightning_climate.datasets import ClimateSet, generate_climateset
from lightning_climate.datasets.climateset import (
    FIRE_SPECS,
    fire_spec,
    input_dir,
    read_monthly_field,
)

GRID = (4, 6)
#: the 21 climate models of the published (Hugging Face) release
RELEASED = [
    "AWI-CM-1-1-MR", "BCC-CSM2-MR", "CAMS-CSM1-0", "CAS-ESM2-0", "CESM2", "CESM2-WACCM",
    "CMCC-CM2-SR5", "CMCC-ESM2", "CNRM-CM6-1-HR", "EC-Earth3", "EC-Earth3-Veg", "EC-Earth3-Veg-LR",
    "FGOALS-f3-L", "GFDL-ESM4", "INM-CM4-8", "INM-CM5-0", "MPI-ESM1-2-HR", "MRI-ESM2-0",
    "NorESM2-LM", "NorESM2-MM", "TaiESM1",
]  # fmt: skip
#: upstream's OPENBURNING_MODEL_MAPPING entries that are not its "other" default
UPSTREAM_SPECIAL = {
    "CESM2-WACCM": ("no-fires", "no-fires"),
    "CMCC-ESM2": ("no-fires", "no-fires"),
    "NorESM2-LM": ("no-fires", "no-fires"),
    "NorESM2-MM": ("no-fires", "no-fires"),
    "GFDL-ESM4": ("no-fires", "no-fires"),
    "TaiESM1": ("anthro-fires", "all-fires"),
    "CESM2": ("anthro-fires", "all-fires"),
    "MRI-ESM2-0": ("anthro-fires", "all-fires"),
}
#: the four models that got the default (anthro-fires) forcing before
FIXED = ["NorESM2-MM", "GFDL-ESM4", "CESM2-WACCM", "CMCC-ESM2"]


def test_every_released_model_has_upstreams_variant() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no released model falls back to the default
        for model in RELEASED:
            expected = UPSTREAM_SPECIAL.get(model, ("anthro-fires", "anthro-fires"))
            got = (fire_spec(model, "historical", "BC_sum"), fire_spec(model, "ssp245", "SO2_sum"))
            assert got == expected, model
    assert FIRE_SPECS["MRI-ESM-2.0"] == FIRE_SPECS["MRI-ESM2-0"]  # upstream's spelling


def test_unknown_model_warns_and_gets_the_default() -> None:
    with pytest.warns(UserWarning, match=r"'MyModel-1' is not in ClimateSet's fire-variant table"):
        assert fire_spec("MyModel-1", "ssp126", "CH4_sum") == "anthro-fires"


@pytest.fixture(scope="module")
def fire_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fire variant of BC in ssp245 and historical (written for TaiESM1 and EC-Earth3)."""
    root = tmp_path_factory.mktemp("climateset_fires")
    models = [*FIXED, "TaiESM1", "EC-Earth3", "MRI-ESM2-0"]
    for scenario, year in (("ssp245", 2015), ("historical", 2014)):
        generate_climateset(
            root, models, [scenario], [year], grid_shape=GRID, in_vars=["BC_sum"], progress=False
        )
    return root


def bc_variant(root: Path, scenario: str, year: int, variant: str) -> np.ndarray:
    (path,) = input_dir(root, scenario, "BC_sum", year).glob(f"*{variant}*.nc")
    return read_monthly_field(path, "BC_sum", year).values


@pytest.mark.parametrize("model", FIXED)
def test_no_fire_models_read_the_no_fires_forcing(fire_root: Path, model: str) -> None:
    sample = ClimateSet(fire_root, [model], ["ssp245"], [2015], in_vars=["BC_sum"])[0]
    x = sample["x"][:, 0].numpy()
    np.testing.assert_array_equal(x, bc_variant(fire_root, "ssp245", 2015, "no-fires"))
    wrong = bc_variant(fire_root, "ssp245", 2015, "anthro-fires")  # what they read before
    assert np.abs(x - wrong).max() > 0.01 * np.abs(wrong).max()


def test_mri_reads_anthro_then_all_fires(fire_root: Path) -> None:
    data = ClimateSet(
        fire_root, ["MRI-ESM2-0"], ["historical", "ssp245"], [2015], in_vars=["BC_sum"],
        historical_years=[2014],
    )  # fmt: skip
    hist, ssp = (data[i]["x"][:, 0].numpy() for i in range(2))
    np.testing.assert_array_equal(hist, bc_variant(fire_root, "historical", 2014, "anthro-fires"))
    np.testing.assert_array_equal(ssp, bc_variant(fire_root, "ssp245", 2015, "all-fires"))


# --------------------------------------------------------------------------- historical years


@pytest.fixture(scope="module")
def years_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("climateset_years")
    generate_climateset(root, scenarios=["historical"], years=range(2009, 2015), grid_shape=GRID,
                        progress=False)  # fmt: skip
    return generate_climateset(
        root, scenarios=["ssp126", "ssp245"], years=range(2015, 2021), grid_shape=GRID,
        progress=False,
    )  # fmt: skip


def test_reader_uses_historical_years_for_historical(years_root: Path) -> None:
    data = ClimateSet(years_root, scenarios=["historical", "ssp126"], years=[2019, 2020],
                      historical_years=[2012, 2013, 2014])  # fmt: skip
    assert [(k.scenario, k.year) for k in data.keys] == [
        ("historical", 2012), ("historical", 2013), ("historical", 2014),
        ("ssp126", 2019), ("ssp126", 2020),
    ]  # fmt: skip
    (path,) = (data.files[1][1][0].parent).glob("*.nc")
    np.testing.assert_array_equal(
        data[1]["y"][:, 0].numpy(), read_monthly_field(path, "tas", 2013).values
    )
    with pytest.raises(FileNotFoundError, match=r"historical/BC_sum/250_km/mon/2019"):
        ClimateSet(years_root, scenarios=["historical", "ssp126"], years=[2019, 2020])
    with pytest.raises(ValueError, match="historical_years must be None"):
        ClimateSet(years_root, scenarios=["historical"], years=[2014], historical_years=[])


def test_datamodule_train_historical_years(years_root: Path) -> None:
    dm = ClimateSetDataModule(
        root=str(years_root), train_scenarios=["historical", "ssp126"], test_scenarios=["ssp245"],
        train_years=(2015, 2020), test_years=(2015, 2020), train_historical_years=(2009, 2014),
        val_fraction=0.2, batch_size=2,
    )  # fmt: skip
    dm.setup("fit")

    def runs(dataset: ClimateSet) -> list[tuple[str, int]]:
        return [(k.scenario, k.year) for k in dataset.keys]

    # blocked validation: the last round(0.2 * 6) = 1 year of each run
    assert runs(dm.val_dataset) == [("historical", 2014), ("ssp126", 2020)]
    assert runs(dm.train_dataset) == [("historical", y) for y in range(2009, 2014)] + [
        ("ssp126", y) for y in range(2015, 2020)
    ]
    with pytest.raises(ValueError, match=r"train_historical_years must be \[first_year"):
        ClimateSetDataModule(root=str(years_root), train_historical_years=(2014, 2009))


def test_datamodule_generates_historical_years(tmp_path: Path) -> None:
    dm = ClimateSetDataModule(
        root=str(tmp_path), train_scenarios=["historical", "ssp126"], test_scenarios=["ssp126"],
        train_years=(2015, 2016), test_years=(2015, 2016), train_historical_years=(2013, 2014),
        in_vars=["CO2_sum"], out_vars=["tas"], val_fraction=0.5, generate=True,
        generate_grid_shape=GRID,
    )  # fmt: skip
    dm.prepare_data()
    historical = tmp_path / "outputs/CMIP6/NorESM2-LM/r1i1p1f1/historical/tas/250_km/mon"
    assert sorted(p.name for p in historical.iterdir()) == ["2013", "2014"]
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 4
