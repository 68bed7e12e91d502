import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ERA5_SAMPLE, EXAMPLES, RunCLI
from lightning.pytorch import Trainer

from lightning_climate.callbacks import DownscalingReport
from lightning_climate.datamodules import ERA5DataModule, NavierStokesDataModule
from lightning_climate.models import DFNO, SRCNN, Interpolation
from lightning_climate.tasks import DownscalingTask

TINY_DFNO = [
    "--model.init_args.model.init_args.hidden_channels",
    "4",
    "--model.init_args.model.init_args.num_residual_blocks",
    "1",
    "--model.init_args.model.init_args.n_modes",
    "[4, 4]",
]
TINY_SRCNN = [
    "--model.init_args.model.init_args.hidden_channels",
    "4",
    "--model.init_args.model.init_args.num_residual_blocks",
    "1",
]


#: the examples on the small shared Navier–Stokes file
NS_ARGS = [
    "--data.init_args.resolution",
    "16",
    "--data.init_args.val_fraction",
    "0.25",
    "--data.init_args.test_fraction",
    "0.25",
]


@pytest.mark.parametrize(
    ("config", "tiny"),
    [("navier_stokes_dfno.yaml", TINY_DFNO), ("navier_stokes_srcnn.yaml", TINY_SRCNN)],
)
def test_examples_fit_test_predict(
    config: str,
    tiny: list[str],
    navier_stokes_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    run_cli: RunCLI,
) -> None:
    args = [*NS_ARGS, *tiny]
    config_path, root = EXAMPLES / config, str(navier_stokes_file)
    run_cli("fit", config_path, *args, "--trainer.max_epochs", "1", root=root, tiny=False)
    out = capsys.readouterr().out
    assert "bicubic rel. L2" in out and "x4" in out
    figure = tmp_path / "downscaling_report.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1
    test = run_cli("test", config_path, *args, "--ckpt_path", str(ckpts[0]), root=root, tiny=False)
    assert {"test_x1_MSE", "test_x4_MSE", "test_x4_loss"} <= set(test["metrics"])
    run_cli("predict", config_path, *args, "--ckpt_path", str(ckpts[0]), root=root, tiny=False)


def test_python_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_climate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "fit" in out.stdout and "predict" in out.stdout
    version = subprocess.run(
        [sys.executable, "-m", "lightning_climate", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip().endswith("0.1.0")


def small_datamodule(path: Path) -> NavierStokesDataModule:
    return NavierStokesDataModule(
        root=path, resolution=16, batch_size=4, val_fraction=0.25, test_fraction=0.25
    )


def test_training_lowers_loss_and_checkpoint_keeps_statistics(
    navier_stokes_file: Path, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    dm = small_datamodule(navier_stokes_file)
    task = DownscalingTask(DFNO(hidden_channels=8, num_residual_blocks=1, n_modes=(8, 8)))
    trainer = Trainer(max_epochs=15, limit_val_batches=0, **trainer_kwargs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    trainer.fit(task, datamodule=dm)
    stats = dm.train_statistics()
    assert torch.equal(task.normalizer.shift, stats["hr_min"])
    assert torch.equal(task.normalizer.scale, stats["hr_max"] - stats["hr_min"] + 1e-5)
    with torch.no_grad():
        pred = task(batch["lr"], 2)
        err_model = torch.mean((pred - batch["hr"]) ** 2).item()
        bicubic = torch.nn.functional.interpolate(batch["lr"], scale_factor=2, mode="bicubic")
        err_bicubic = torch.mean((bicubic - batch["hr"]) ** 2).item()
    # DFNO's output is the interpolated input plus a learned correction: after training it must beat bicubic.
    assert err_model < err_bicubic
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    loaded = DownscalingTask.load_from_checkpoint(
        path, model=DFNO(hidden_channels=8, num_residual_blocks=1, n_modes=(8, 8))
    )
    assert torch.equal(loaded.normalizer.shift, stats["hr_min"]) and bool(loaded.normalizer.fitted)
    with torch.no_grad():
        assert torch.allclose(loaded(batch["lr"], 2), pred)


def test_test_metrics_are_logged_per_factor(
    navier_stokes_file: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = small_datamodule(navier_stokes_file)
    task = DownscalingTask(SRCNN(factor=2, hidden_channels=4, num_residual_blocks=1))
    results = Trainer(**trainer_kwargs).test(task, datamodule=dm)
    keys = set().union(*results)
    for name in ("x1", "x2", "x4"):
        assert {
            f"test_{name}_MSE",
            f"test_{name}_RelativeL2",
            f"test_{name}_MAE",
            f"test_{name}_loss",
        } <= keys
    # Each test set reports its own numbers.
    assert results[0]["test_x1_MSE"] != results[2]["test_x4_MSE"]


def test_report_matches_direct_computation(
    navier_stokes_file: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    dm = small_datamodule(navier_stokes_file)
    task = DownscalingTask(DFNO(hidden_channels=4, num_residual_blocks=1, n_modes=(4, 4)))
    report = DownscalingReport()
    Trainer(max_steps=2, limit_val_batches=0, callbacks=[report], **trainer_kwargs).fit(
        task, datamodule=dm
    )
    assert report.results["x1"]["base_MSE"] == pytest.approx(
        0.0, abs=1e-12
    )  # bicubic at 1x is the identity
    ds = dm.test_dataset["x4"]
    lr = torch.stack([ds[i]["lr"] for i in range(len(ds))])
    hr = torch.stack([ds[i]["hr"] for i in range(len(ds))])
    with torch.no_grad():
        mse = torch.mean((task(lr, 4) - hr) ** 2).item()
    bicubic = torch.nn.functional.interpolate(
        lr, size=hr.shape[-2:], mode="bicubic", align_corners=False
    )
    assert report.results["x4"]["MSE"] == pytest.approx(mse, rel=1e-5)
    assert report.results["x4"]["base_MSE"] == pytest.approx(
        torch.mean((bicubic - hr) ** 2).item(), rel=1e-5
    )
    assert report.figure_path is not None and report.figure_path.exists()


def test_bad_arguments_and_shapes() -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        DownscalingTask(SRCNN(), loss="huber")  # type: ignore[arg-type]
    task = DownscalingTask(SRCNN(factor=2, hidden_channels=4, num_residual_blocks=1))
    batch = {
        "lr": torch.randn(2, 1, 8, 8),
        "hr": torch.randn(2, 1, 16, 24),
        "index": torch.arange(2),
    }
    with pytest.raises(ValueError, match="different factors along the two axes"):
        task.training_step(batch, 0)
    with pytest.raises(ValueError, match="max_batches"):
        DownscalingReport(max_batches=0)


@pytest.mark.ddp
def test_ddp_two_processes_train_the_example(
    navier_stokes_file: Path, tmp_path: Path, run_cli: RunCLI
) -> None:
    run_cli(
        "fit",
        EXAMPLES / "navier_stokes_dfno.yaml",
        *NS_ARGS,
        *TINY_DFNO,
        "--trainer.max_steps",
        "3",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp_spawn",
        "--trainer.limit_val_batches",
        "1",
        root=str(navier_stokes_file),
        tiny=False,
    )
    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.parametrize("constraint", ["add", "softmax"])
def test_constraint_conserves_block_means_at_every_factor(constraint: str) -> None:
    torch.manual_seed(0)
    task = DownscalingTask(
        DFNO(hidden_channels=4, num_residual_blocks=1, n_modes=(4, 4)), constraint=constraint
    )
    task.normalizer.fit({"hr_min": torch.tensor([-1.0]), "hr_max": torch.tensor([1.0])})
    lr = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    with torch.no_grad():
        assert torch.allclose(
            task(lr, 1), lr, atol=1e-5
        )  # 1x under a conservation layer is the input
        for factor in (2, 4):
            out = task(lr, factor)
            pooled = torch.nn.functional.avg_pool2d(out, factor)
            assert torch.allclose(pooled, lr, atol=1e-5)


def test_constraint_twice_is_refused() -> None:
    from lightning_climate.layers import ConstrainedModel

    with pytest.raises(ValueError, match="already ends in the 'add' constraint"):
        DownscalingTask(ConstrainedModel(SRCNN(), "add"), constraint="softmax")


def test_psnr_and_ssim_use_the_training_range(
    navier_stokes_file: Path, trainer_kwargs: dict[str, Any]
) -> None:
    """PSNR in normalised units with data range 1 is PSNR in physical units with the training range."""
    torch.manual_seed(0)
    dm = small_datamodule(navier_stokes_file)
    task = DownscalingTask(
        SRCNN(factor=2, hidden_channels=4, num_residual_blocks=1), ssim_kernel_size=5
    )
    Trainer(max_steps=1, limit_val_batches=0, **trainer_kwargs).fit(task, datamodule=dm)
    (result,) = Trainer(**trainer_kwargs).validate(task, datamodule=dm)
    stats = dm.train_statistics()
    data_range = (stats["hr_max"] - stats["hr_min"]).item() + task.normalizer.eps
    expected = 10 * torch.log10(torch.tensor(data_range**2 / result["val_MSE"])).item()
    assert result["val_PSNR"] == pytest.approx(expected, rel=1e-4)
    assert 0 < result["val_SSIM"] <= 1
    with pytest.raises(ValueError, match="odd integer >= 3"):
        DownscalingTask(SRCNN(), ssim_kernel_size=4)


def test_era5_latitude_weighted_rmse_per_variable_on_patches(
    trainer_kwargs: dict[str, Any],
) -> None:
    """Batches with ``lat`` (ERA5) log a latitude-weighted RMSE per variable, from the patches."""
    era5 = ERA5_SAMPLE
    dm = ERA5DataModule(
        str(era5),
        ["t", "z"],
        levels=[850],
        factor=2,
        patch_size=20,
        batch_size=3,
        train_range=("2017-01-01T00", "2017-01-01T12"),
        test_range=("2017-01-02T12", "2017-01-02T12"),
    )
    task = DownscalingTask(Interpolation("bicubic"), in_channels=2)
    (result,) = Trainer(**trainer_kwargs).test(task, datamodule=dm)
    weighted = torch.zeros(2, dtype=torch.float64)
    total = torch.zeros(2, dtype=torch.float64)
    unweighted = torch.zeros(2, dtype=torch.float64)
    for batch in dm.test_dataloader():
        err2 = (task(batch["lr"], 2) - batch["hr"]).double() ** 2  # (B, C, H, W)
        cos = torch.cos(torch.deg2rad(batch["lat"].double()))[:, None, :, None]  # (B, 1, H, 1)
        weighted += (err2 * cos).sum(dim=(0, 2, 3))
        total += cos.expand_as(err2).sum(dim=(0, 2, 3))
        unweighted += err2.mean(dim=(2, 3)).sum(0)
    expected = (weighted / total).sqrt()
    assert dm.channels == ["t850", "z850"]
    for c, name in enumerate(dm.channels):
        assert result[f"test_LatRMSE_{name}"] == pytest.approx(expected[c].item(), rel=1e-5)
    # the weighting matters: it differs from the plain RMSE over the same patches
    plain = (unweighted / len(dm.test_dataset)).sqrt()
    assert abs(expected[0] - plain[0]) / plain[0] > 1e-3


def test_check_finite_reaches_the_constraint_layer() -> None:
    model = SRCNN(factor=2, hidden_channels=4, num_residual_blocks=1)
    task = DownscalingTask(model, constraint="add", check_finite=True)
    lr = torch.randn(1, 1, 8, 8)
    lr[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="AdditiveConstraint"):
        task(lr, 2)
    quiet = DownscalingTask(
        SRCNN(factor=2, hidden_channels=4, num_residual_blocks=1), constraint="add"
    )
    assert torch.isnan(quiet(lr, 2)).any()
