from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CLIMATESET_GRID, CLIMATESET_MODELS
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_climate.datamodules import ClimateSetDataModule
from lightning_climate.datasets.climateset import HISTORICAL_YEARS, input_dir
from lightning_climate.models import CNNLSTM
from lightning_climate.tasks import EmulationTask


@pytest.fixture(scope="module")
def root(climateset_co2_root: Path) -> Path:
    return climateset_co2_root


def datamodule(root: Path, **kwargs: Any) -> ClimateSetDataModule:
    args: dict[str, Any] = {
        "root": str(root),
        "climate_models": CLIMATESET_MODELS[:1],
        "train_scenarios": ["ssp126", "ssp585"],
        "train_years": (2015, 2020),
        "test_years": (2017, 2020),
        "val_fraction": 0.2,
        "batch_size": 3,
    }
    return ClimateSetDataModule(**(args | kwargs))


def batches(dm: ClimateSetDataModule) -> list[dict[str, torch.Tensor]]:
    """Physical batches of the train split in sample order (the train loader shuffles)."""
    return list(torch.utils.data.DataLoader(dm.train_dataset, batch_size=3))


def test_default_off_batches_are_the_inputs_alone(root: Path) -> None:
    off, on = datamodule(root), datamodule(root, cumulative_co2=True)
    assert not off.cumulative_co2 and off.input_names == off.in_vars
    assert on.input_names == [*on.in_vars, "CO2_cumulative"]
    for dm in (off, on):
        dm.setup("fit")
    off_stats, on_stats = off.train_statistics(), on.train_statistics()
    assert off_stats["x_mean"].shape == (1, 4) and on_stats["x_mean"].shape == (1, 5)
    for key in ("x_mean", "x_std"):  # the 4 forcings keep their statistics exactly
        torch.testing.assert_close(on_stats[key][:, :4], off_stats[key])
    for key in ("y_mean", "y_std"):
        torch.testing.assert_close(on_stats[key], off_stats[key], rtol=0, atol=0)
    for a, b in zip(batches(off), batches(on), strict=True):
        assert a["x"].shape[2] == 4 and b["x"].shape[2] == 5
        torch.testing.assert_close(b["x"][:, :, :4], a["x"], rtol=0, atol=0)
        for key in ("y", "model_id", "year", "index"):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_channel_statistics_come_from_training_years_and_travel_in_checkpoints(
    root: Path, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = datamodule(root, cumulative_co2=True)
    dm.setup("fit")
    values = np.array(
        [dm.train_dataset.cumulative[(k.scenario, k.year)] for k in dm.train_dataset.keys]
    )
    assert {k.year for k in dm.train_dataset.keys} == set(range(2015, 2020))  # 2020 validates
    stats = dm.train_statistics()
    mean, std = stats["x_mean"][0, -1].item(), stats["x_std"][0, -1].item()
    assert mean == pytest.approx(values.mean(), rel=1e-6)
    assert std == pytest.approx(values.std(), rel=1e-4)
    for batch in batches(dm):
        for x, index in zip(batch["x"], batch["index"], strict=True):
            key = dm.train_dataset.keys[int(index)]
            channel = x[:, -1]
            assert torch.all(channel == channel[0, 0, 0])  # every month of the 12-step sequence
            raw = dm.train_dataset.cumulative[(key.scenario, key.year)]
            assert channel[0, 0, 0].item() == pytest.approx(raw, rel=1e-6)  # physical GtCO2
    # a sequence model (CNN-LSTM over the 12 months) trains on it; statistics go in the checkpoint
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    task = EmulationTask(CNNLSTM(5, 2, *CLIMATESET_GRID, filters=2, hidden=2))
    kwargs = trainer_kwargs | {"callbacks": [callback]}
    Trainer(max_steps=2, limit_val_batches=1, **kwargs).fit(task, datamodule=dm)
    saved = torch.load(callback.last_model_path, weights_only=False)["ClimateSetDataModule"]
    torch.testing.assert_close(saved["train_statistics"]["x_mean"], stats["x_mean"])
    restored = datamodule(root, cumulative_co2=True)
    restored.load_state_dict(saved)
    torch.testing.assert_close(restored.train_statistics()["x_std"], stats["x_std"])
    # the task's normaliser was fitted with the same statistics (it z-scores the new channel too)
    torch.testing.assert_close(task.normalizers["x"].shift, stats["x_mean"].float())
    with pytest.raises(ValueError, match=r"'x_mean' has shape \(1, 5\).*expects \(1, 4\)"):
        datamodule(root).load_state_dict(saved)


def test_checkpoint_without_the_channel_is_refused_with_it(root: Path) -> None:
    saved = datamodule(root).train_statistics()
    with pytest.raises(ValueError, match=r"'x_mean' has shape \(1, 4\).*expects \(1, 5\)"):
        datamodule(root, cumulative_co2=True).load_state_dict({"train_statistics": saved})


def test_test_split_sums_years_it_does_not_use(root: Path) -> None:
    dm = datamodule(root, cumulative_co2=True)
    dm.setup("test")
    test = dm.test_dataset["ssp245_NorESM2-LM"]
    assert [k.year for k in test.keys] == [2017, 2018, 2019, 2020]
    # 2015 and 2016 are outside the split but inside every sum: 2017's value exceeds 2016's.
    with_early = datamodule(root, cumulative_co2=True, test_years=(2015, 2020))
    with_early.setup("test")
    early = with_early.test_dataset["ssp245_NorESM2-LM"]
    assert test.cumulative[("ssp245", 2017)] == early.cumulative[("ssp245", 2017)]
    assert early.cumulative[("ssp245", 2016)] < test.cumulative[("ssp245", 2017)]


def test_generate_writes_the_co2_history(tmp_path: Path) -> None:
    dm = ClimateSetDataModule(
        root=str(tmp_path),
        train_scenarios=["ssp126"],
        test_scenarios=["ssp245"],
        train_years=(2018, 2020),
        test_years=(2019, 2019),
        val_fraction=0.4,
        generate=True,
        generate_grid_shape=(4, 6),
        cumulative_co2=True,
    )
    dm.prepare_data()
    for scenario, years in (("historical", HISTORICAL_YEARS), ("ssp126", range(2015, 2021))):
        for year in years:
            assert any(input_dir(tmp_path, scenario, "CO2_sum", year).glob("*.nc")), year
    assert not input_dir(tmp_path, "ssp126", "BC_sum", 2015).exists()  # only CO2 for the sums
    dm.setup("fit")
    assert dm.train_dataset[0]["x"].shape == (12, 5, 4, 6)
