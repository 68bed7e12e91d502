from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import CLIMATESET_GRID, CLIMATESET_MODELS, EXAMPLES, RunCLI
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_climate.datamodules import ClimateSetDataModule
from lightning_climate.main import main
from lightning_climate.models import CNNLSTM, SuperEmulator, UNet
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
        "train_years": (2015, 2020),
        "test_years": (2015, 2018),
        "val_fraction": 0.2,
        "batch_size": 1,
    }
    return ClimateSetDataModule(**(args | kwargs))


def super_task() -> EmulationTask:
    backbone = UNet(4, 4, base_channels=4, depth=1)
    return EmulationTask(SuperEmulator(backbone, 2, feature_channels=4, out_channels=2))


@pytest.fixture(scope="module")
def checkpoint(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    callback = ModelCheckpoint(dirpath=tmp, save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp,
    )
    torch.manual_seed(0)
    trainer.fit(super_task(), datamodule=datamodule(root))
    return Path(callback.last_model_path)


def lat_rmse(pred: np.ndarray, target: np.ndarray, lat: np.ndarray) -> float:
    w = np.cos(np.deg2rad(lat))
    w = w / w.mean()
    return float(np.sqrt(np.mean((pred - target) ** 2 * w[:, None])))


def test_test_metrics_are_physical_and_per_climate_model(
    root: Path, checkpoint: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = datamodule(root)
    task = super_task()
    trainer = Trainer(**trainer_kwargs)
    results = trainer.test(task, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    assert len(results) == 2
    names = ["ssp245_NorESM2-LM", "ssp245_MPI-ESM1-2-HR"]
    for result, name in zip(results, names, strict=True):
        assert set(result) == {
            f"test_{name}_loss",
            f"test_{name}_LatRMSE_tas",
            f"test_{name}_LatRMSE_pr",
        }
    predictions = trainer.predict(task, datamodule=dm, ckpt_path=checkpoint)
    for name, result, batches in zip(names, results, predictions, strict=True):
        pred = torch.cat([b["pred"] for b in batches]).numpy()
        index = torch.cat([b["index"] for b in batches]).tolist()
        target = np.stack([dm.predict_dataset[name][i]["y"].numpy() for i in index])
        for channel, var in enumerate(["tas", "pr"]):
            expected = lat_rmse(pred[:, :, channel], target[:, :, channel], dm.latitudes.numpy())
            assert result[f"test_{name}_LatRMSE_{var}"] == pytest.approx(expected, rel=1e-4)
    # Physical units: a tas error in kelvin is far larger than a pr error in kg m-2 s-1.
    assert (
        results[0]["test_ssp245_NorESM2-LM_LatRMSE_tas"]
        > 1e3 * results[0]["test_ssp245_NorESM2-LM_LatRMSE_pr"]
    )


@pytest.mark.ddp
def test_ddp_test_metrics_equal_single_process(
    root: Path, checkpoint: Path, trainer_kwargs: dict[str, Any]
) -> None:
    single = Trainer(**trainer_kwargs).test(
        super_task(), datamodule=datamodule(root), ckpt_path=checkpoint, verbose=False
    )
    kwargs = trainer_kwargs | {"devices": 2, "strategy": "ddp_spawn", "deterministic": False}
    double = Trainer(**kwargs).test(
        super_task(), datamodule=datamodule(root), ckpt_path=checkpoint, verbose=False
    )
    assert len(single) == len(double) == 2
    for a, b in zip(single, double, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_load_from_checkpoint_restores_weights(checkpoint: Path) -> None:
    reference = super_task()
    reference.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    loaded = EmulationTask.load_from_checkpoint(checkpoint, model=super_task().model)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert loaded.hparams["loss"] == "lat_mse" and "model" not in loaded.hparams


def test_errors_name_the_fix(root: Path, trainer_kwargs: dict[str, Any]) -> None:
    task = EmulationTask(CNNLSTM(4, 2, height=9, width=12, filters=2, hidden=2))
    with pytest.raises(ValueError, match=r"Model output .* does not match target .*grid size"):
        Trainer(max_steps=1, **trainer_kwargs).fit(
            task, datamodule=datamodule(root, climate_models=MODELS[:1])
        )
    with pytest.raises(ValueError, match="loss must be 'lat_mse' or 'mse'"):
        EmulationTask(UNet(4, 2), loss="mae")
    with pytest.raises(ValueError, match="SuperEmulator needs the batch's `model_id`"):
        super_task()(torch.zeros(1, 12, 4, *GRID))
    task = EmulationTask(UNet(4, 2, base_channels=2, depth=1))
    dm = datamodule(root)
    dm.setup("fit")
    with pytest.raises(ValueError, match="needs the grid latitudes"):
        Trainer(max_steps=1, **trainer_kwargs).fit(task, train_dataloaders=dm.train_dataloader())


def test_seq_to_one_trains_on_the_last_month(root: Path, trainer_kwargs: dict[str, Any]) -> None:
    dm = datamodule(root, seq_to_seq=False, climate_models=MODELS[:1], out_vars=["tas"])
    task = EmulationTask(UNet(4, 1, base_channels=2, depth=1), out_vars=["tas"], loss="mse")
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, **trainer_kwargs)
    trainer.fit(task, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["val_LatRMSE_tas"])
    assert set(trainer.callback_metrics) >= {"train_loss", "val_loss", "train_LatRMSE_tas"}


@pytest.fixture(scope="module")
def example_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples_data")


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("climateset_*.yaml")), ids=lambda p: p.stem)
def test_example_configs_run(config: Path, example_root: Path, run_cli: RunCLI) -> None:
    run = run_cli(
        "fit",
        config,
        "--trainer.fast_dev_run",
        "1",
        "--data.init_args.train_years",
        "[2015, 2017]",
        "--data.init_args.test_years",
        "[2015, 2015]",
        root=str(example_root),
        tiny=False,
    )
    metrics = run["metrics"]
    for key in ("train_loss", "val_loss", "val_LatRMSE_tas", "val_LatRMSE_pr"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    dm = run["datamodule"]
    assert isinstance(dm, ClimateSetDataModule) and dm.generate
    channels = 5 if dm.cumulative_co2 else 4  # climateset_unet_cumco2 adds cumulative CO2
    assert dm.train_dataset[0]["x"].shape == (12, channels, 32, 48)  # the example's generated grid


@pytest.mark.parametrize(
    "config", sorted((EXAMPLES / "paper").glob("*.yaml")), ids=lambda p: p.stem
)
def test_paper_configs_parse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["data"]["init_args"]["root"] == "Climateset_DATA"
    assert not printed["data"]["init_args"]["generate"]
    assert (
        printed["model"]["init_args"]["optimizer"]["init_args"]["lr"]
        == source["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    )
    assert printed["trainer"]["gradient_clip_val"] == 1.0


def test_fits_with_a_logger_when_out_vars_come_from_the_datamodule(
    root: Path, trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """Lightning merges the module's and the datamodule's hparams for a logger: no clash."""
    from lightning.pytorch.loggers import CSVLogger

    dm = datamodule(root, climate_models=MODELS[:1])
    task = EmulationTask(UNet(4, 2, base_channels=2, depth=1))
    kwargs = trainer_kwargs | {"logger": CSVLogger(tmp_path)}
    trainer = Trainer(max_steps=1, limit_val_batches=1, **kwargs)
    trainer.fit(task, datamodule=dm)
    assert task.out_vars() == ["tas", "pr"]
    assert {"train_LatRMSE_tas", "train_LatRMSE_pr"} <= set(trainer.callback_metrics)
