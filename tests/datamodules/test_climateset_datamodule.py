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
from lightning_climate.datamodules.climateset import split_train_val
from lightning_climate.layers.normalization import Normalizer
from lightning_climate.models import UNet
from lightning_climate.tasks import EmulationTask

MODELS = CLIMATESET_MODELS
GRID = CLIMATESET_GRID


@pytest.fixture(scope="module")
def root(climateset_root: Path) -> Path:
    return climateset_root


def datamodule(root: Path, **kwargs: Any) -> ClimateSetDataModule:
    args: dict[str, Any] = {
        "root": str(root),
        "climate_models": MODELS,
        "train_years": (2015, 2024),
        "test_years": (2015, 2018),
        "val_fraction": 0.2,
    }
    return ClimateSetDataModule(**(args | kwargs))


def test_defaults_are_the_benchmark() -> None:
    dm = ClimateSetDataModule()
    assert dm.in_vars == ["BC_sum", "CH4_sum", "CO2_sum", "SO2_sum"]
    assert dm.out_vars == ["tas", "pr"]
    assert dm.train_scenarios == ["ssp126", "ssp370", "ssp585"] and dm.test_scenarios == ["ssp245"]
    assert dm.train_years[0] == 2015 and len(dm.train_years) == 86 and dm.batch_size == 4


def test_split_counts_of_the_paper_and_blocked_split() -> None:
    years = list(range(2015, 2101))
    train, val = split_train_val(years, 258, 0.1, "random", seed=0)
    assert (len(train), len(val)) == (233, 25)
    assert sorted(train + val) == list(range(258))
    assert split_train_val(years, 258, 0.1, "random", seed=0) == (train, val)
    train, val = split_train_val(years, 258, 0.1, "blocked", seed=0)
    assert len(val) == 27  # the last 9 years of each of the 3 scenarios
    assert val[:9] == list(range(77, 86)) and not set(train) & set(val)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        split_train_val(years, 258, 1.0, "blocked", 0)
    with pytest.raises(ValueError, match="'blocked' or 'random'"):
        split_train_val(years, 258, 0.1, "scenario", 0)
    with pytest.raises(ValueError, match=r"train_years must be \[first_year, last_year\]"):
        ClimateSetDataModule(train_years=(2100, 2015))


def test_splits_and_per_model_test_sets(root: Path) -> None:
    dm = datamodule(root)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_dataset) == 2 * 3 * 8 and len(dm.val_dataset) == 2 * 3 * 2
    val_years = {k.year for k in dm.val_dataset.keys}
    assert val_years == {2023, 2024} and not val_years & {k.year for k in dm.train_dataset.keys}
    assert list(dm.test_dataset) == ["ssp245_NorESM2-LM", "ssp245_MPI-ESM1-2-HR"]
    assert dm.dataloader_names("test") == list(dm.test_dataset)
    assert {k.climate_model for k in dm.test_dataset["ssp245_MPI-ESM1-2-HR"].keys} == {
        "MPI-ESM1-2-HR"
    }
    assert [int(dm.test_dataset["ssp245_MPI-ESM1-2-HR"][i]["index"]) for i in range(4)] == [
        0,
        1,
        2,
        3,
    ]
    np.testing.assert_allclose(dm.latitudes, np.linspace(-90, 90, GRID[0]))
    batches = list(dm.train_dataloader())
    assert any(len(set(b["model_id"].tolist())) == 2 for b in batches)  # batches mix climate models


def test_statistics_come_from_the_training_split_only(root: Path) -> None:
    dm = datamodule(root)
    dm.setup("fit")
    stats = dm.train_statistics()
    assert set(stats) == {"x_mean", "x_std", "y_mean", "y_std"}
    train, val = list(dm.train_dataset), list(dm.val_dataset)
    for model_id in range(2):
        samples = [s for s in train if int(s["model_id"]) == model_id]
        y = torch.stack([s["y"] for s in samples]).double()  # (N, 12, C, H, W)
        x = torch.stack([s["x"] for s in samples]).double()
        torch.testing.assert_close(stats["y_mean"][model_id], y.mean(dim=(0, 1, 3, 4)))
        torch.testing.assert_close(
            stats["y_std"][model_id], y.std(dim=(0, 1, 3, 4), unbiased=False)
        )
        torch.testing.assert_close(stats["x_mean"][model_id], x.mean(dim=(0, 1, 3, 4)))
        torch.testing.assert_close(
            stats["x_std"][model_id], x.std(dim=(0, 1, 3, 4), unbiased=False)
        )
        val_y = torch.stack([s["y"] for s in val if int(s["model_id"]) == model_id]).double()
        pooled = torch.cat([y, val_y]).mean(dim=(0, 1, 3, 4))
        assert not torch.allclose(stats["y_mean"][model_id], pooled)
    # The two climate models have different climates, hence different statistics.
    assert abs(stats["y_mean"][0, 0] - stats["y_mean"][1, 0]) > 0.3


def test_batches_are_physical_and_grouped_normalisation_is_invertible(root: Path) -> None:
    dm = datamodule(root, batch_size=6)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"x", "y", "model_id", "year", "index"}  # no statistics in batches
    first = dm.val_dataset[0]
    torch.testing.assert_close(batch["y"][0], first["y"], rtol=0, atol=0)
    assert float(batch["y"][:, :, 0].mean()) > 200  # tas in kelvin, not z-scored
    stats = dm.train_statistics()
    for key in ("x", "y"):
        norm = Normalizer(key, "zscore", channel_dim=2, grouped=True)
        norm.fit(stats)
        z = norm(batch[key], batch["model_id"])
        torch.testing.assert_close(norm.inverse(z, batch["model_id"]), batch[key])
        m = int(batch["model_id"][0])
        channel = 2 if key == "x" else 0
        expected = (batch[key][0, :, channel] - stats[f"{key}_mean"][m, channel]) / stats[
            f"{key}_std"
        ][m, channel]
        torch.testing.assert_close(z[0, :, channel], expected.float())
    assert abs(float(Normalizer("x", channel_dim=2, grouped=True).forward(batch["x"]).mean())) > 0


def test_state_dict_round_trip_and_checkpoint(
    root: Path, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = datamodule(root)
    stats = dm.train_statistics()
    other = datamodule(root)
    other.load_state_dict(dm.state_dict())
    for key, value in stats.items():
        torch.testing.assert_close(other.train_statistics()[key], value)
    with pytest.raises(ValueError, match=r"'x_mean' has shape \(2, 4\).*expects \(1, 4\)"):
        datamodule(root, climate_models=MODELS[:1]).load_state_dict(dm.state_dict())
    assert datamodule(root).state_dict() == {}

    task = EmulationTask(UNet(4, 2, base_channels=4, depth=1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = Trainer(max_steps=1, limit_val_batches=1, callbacks=[checkpoint], **trainer_kwargs)
    trainer.fit(task, datamodule=dm)
    ckpt = torch.load(checkpoint.last_model_path, weights_only=True)
    saved = ckpt["ClimateSetDataModule"]["train_statistics"]
    for key, value in stats.items():
        torch.testing.assert_close(saved[key], value)
    # A fresh datamodule restored from the checkpoint uses the checkpoint's statistics.
    restored = datamodule(root)
    restored.load_state_dict({"train_statistics": {k: v + 1 for k, v in stats.items()}})
    Trainer(**trainer_kwargs).test(
        task, datamodule=restored, ckpt_path=checkpoint.last_model_path, verbose=False
    )
    torch.testing.assert_close(restored.train_statistics()["y_mean"], stats["y_mean"])


def test_checkpoint_with_other_variables_is_refused(root: Path) -> None:
    saved = datamodule(root, out_vars=["tas"]).train_statistics()
    state = {"train_statistics": saved}
    with pytest.raises(ValueError, match=r"'y_mean' has shape \(2, 1\).*expects \(2, 2\)"):
        datamodule(root).load_state_dict(state)
    fewer_inputs = datamodule(root, in_vars=["CO2_sum"])
    with pytest.raises(ValueError, match=r"'x_mean' has shape \(2, 1\).*expects \(2, 4\)"):
        datamodule(root).load_state_dict({"train_statistics": fewer_inputs.train_statistics()})
    missing = {k: v for k, v in saved.items() if k != "x_std"}
    with pytest.raises(ValueError, match=r"statistics are \['x_mean', 'y_mean', 'y_std'\]"):
        datamodule(root, out_vars=["tas"]).load_state_dict({"train_statistics": missing})


def test_prepare_data_generates_only_when_asked(tmp_path: Path) -> None:
    dm = ClimateSetDataModule(
        root=str(tmp_path / "none"), train_years=(2015, 2016), test_years=(2015, 2015)
    )
    dm.prepare_data()
    assert not (tmp_path / "none").exists()
    with pytest.raises(FileNotFoundError, match=r"none/outputs/CMIP6/NorESM2-LM.*generate: true"):
        dm.setup("fit")
    dm = ClimateSetDataModule(
        root=str(tmp_path / "gen"),
        train_years=(2015, 2016),
        test_years=(2015, 2015),
        generate=True,
        generate_grid_shape=(4, 6),
        out_vars=["tas"],
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataset[0]["y"].shape == (12, 1, 4, 6)


def test_in_memory_datamodule_matches_lazy(root: Path) -> None:
    lazy, cached = (
        datamodule(root, climate_models=MODELS[:1]),
        datamodule(root, climate_models=MODELS[:1], in_memory=True),
    )
    for dm in (lazy, cached):
        dm.setup("fit")
    assert cached.train_dataset._cache is not None and lazy.train_dataset._cache is None
    for key, value in lazy.train_statistics().items():
        torch.testing.assert_close(cached.train_statistics()[key], value)


def test_climatology_normalisation(root: Path) -> None:
    dm = datamodule(root, normalization="climatology", batch_size=6)
    dm.setup("fit")
    stats = dm.train_statistics()
    train = list(dm.train_dataset)
    assert stats["y_mean"].shape == (2, 12, 2, *GRID) and stats["y_std"].shape == (2, 2)
    for model_id in range(2):
        y = torch.stack([s["y"] for s in train if int(s["model_id"]) == model_id]).double()
        climatology = y.mean(0)
        torch.testing.assert_close(stats["y_mean"][model_id], climatology)
        anomaly_std = ((y - climatology) ** 2).mean(dim=(0, 1, 3, 4)).sqrt()
        torch.testing.assert_close(stats["y_std"][model_id], anomaly_std)
    raw = next(iter(dm.val_dataloader()))
    norm = Normalizer("y", "zscore", channel_dim=2, grouped=True)
    norm.fit(stats)
    z = norm(raw["y"], raw["model_id"])
    torch.testing.assert_close(norm.inverse(z, raw["model_id"]), raw["y"], rtol=1e-5, atol=1e-4)
    # A zero (normalised) prediction is the climatology of the sample's own climate model.
    expected = stats["y_mean"][raw["model_id"]].float()
    torch.testing.assert_close(norm.inverse(torch.zeros_like(z), raw["model_id"]), expected)
    with pytest.raises(ValueError, match=r"scale \(2, 3\) must have the same shape, or the scale"):
        norm.set_statistics(stats["y_mean"], torch.ones(2, 3))
    other = datamodule(root, normalization="climatology")
    other.load_state_dict(dm.state_dict())
    torch.testing.assert_close(other.train_statistics()["y_mean"], stats["y_mean"])
    with pytest.raises(
        ValueError,
        match=r"'y_mean' has shape \(2, 12, 2, 8, 12\), this configuration expects \(2, 2\)",
    ):
        datamodule(root).load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="normalization must be 'variable' or 'climatology'"):
        datamodule(root, normalization="pixel")
