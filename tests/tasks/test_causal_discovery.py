"""Tests of CausalDiscoveryTask: graph recovery, W >= 0, the augmented Lagrangian and checkpoints."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import EXAMPLES, RunCLI
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from lightning_climate.datamodules import (
    BaseDataModule,
    CausalSyntheticDataModule,
    ClimateSetDataModule,
)
from lightning_climate.datamodules.causal_synthetic import blocked_window_starts
from lightning_climate.datasets.causal_synthetic import read_causal_synthetic
from lightning_climate.metrics.graph import edge_counts, match_latents, permute_graph
from lightning_climate.models import CDSD
from lightning_climate.tasks import CausalDiscoveryTask


def cdsd(num_locations: int, num_latents: int, num_variables: int = 1, **kwargs: Any) -> CDSD:
    """A CDSD model (linear transition and one lag unless told)."""
    return CDSD(
        num_variables=num_variables,
        num_locations=num_locations,
        num_latents=num_latents,
        **kwargs,
    )


def synthetic(tmp_path: Path, **kwargs: Any) -> CausalSyntheticDataModule:
    """A generated 4 x 4 data set with 3 latents (``kwargs`` override)."""
    args: dict[str, Any] = {
        "root": tmp_path / "data",
        "num_latents": 3,
        "height": 4,
        "width": 4,
        "num_timesteps": 200,
        "block_length": 100,
        "generate": True,
    }
    return CausalSyntheticDataModule(**(args | kwargs))


class _AssertNonNegative(Callback):
    """Checks W >= 0 after every training batch (i.e. after every optimizer step)."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        assert pl_module.model.mixing.min() >= 0
        self.checked += 1


def _random_graph_scores(true: torch.Tensor, edges: int, draws: int = 2000) -> tuple[float, float]:
    """Mean SHD and F1 of uniformly random graphs with ``edges`` edges."""
    gen = torch.Generator().manual_seed(0)
    shd, f1 = 0.0, 0.0
    for _ in range(draws):
        graph = torch.zeros(true.numel(), dtype=torch.bool)
        graph[torch.randperm(true.numel(), generator=gen)[:edges]] = True
        tp, fp, fn, _ = edge_counts(graph.view_as(true), true).tolist()
        shd += (fp + fn) / draws
        f1 += 2 * tp / max(2 * tp + fp + fn, 1) / draws
    return shd, f1


def test_learned_graph_beats_random_graphs_and_constraints_hold(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    seed_everything(0)
    dm = CausalSyntheticDataModule(
        root=tmp_path / "data", num_latents=6, num_timesteps=1000, batch_size=16, generate=True
    )
    task = CausalDiscoveryTask(
        cdsd(64, 6),
        alm_window=1,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    check = _AssertNonNegative()
    trainer = Trainer(
        max_epochs=20, callbacks=[check], enable_checkpointing=False, **trainer_kwargs
    )
    trainer.fit(task, dm)

    assert check.checked == trainer.global_step == 1000
    assert task.model.mixing.min() == 0.0  # exact zeros from the projection, never negative
    # The augmented Lagrangian drove ||WᵀW - I||_F to its tolerance.
    assert bool(task.alm_converged) and task.alm_updates > 0
    assert task.orthogonality_residual_norm() <= 1.5 * task.ortho_tolerance

    perm = match_latents(task.model.mixing, dm.ground_truth_mixing)
    learned = permute_graph(task.learned_graph(), perm)
    true = dm.ground_truth_graph
    tp, fp, fn, _ = edge_counts(learned, true).tolist()
    shd, f1 = fp + fn, 2 * tp / (2 * tp + fp + fn)
    random_shd, random_f1 = _random_graph_scores(true, int(learned.sum()))
    print(
        f"CDSD synthetic: SHD {shd} F1 {f1:.3f}; random same density SHD {random_shd:.2f} F1 {random_f1:.3f}"
    )
    assert f1 >= random_f1 + 0.3
    assert shd <= random_shd - 4
    # The task logs the same scores against the datamodule's ground truth.
    assert float(trainer.callback_metrics["val_SHD"]) == shd
    assert float(trainer.callback_metrics["val_F1"]) == pytest.approx(f1)
    (tested,) = trainer.test(task, dm)
    assert tested["test_SHD"] == shd and tested["test_F1"] == pytest.approx(f1)
    targets = torch.stack([dm.test_dataset[i]["x"][1:] for i in range(len(dm.test_dataset))])
    # forecasting the training mean (0 after z-scoring with the training statistics)
    stats = dm.train_statistics()
    zero_forecast_mse = float(((targets - stats["x_mean"]) / stats["x_std"]).pow(2).mean())
    print(
        f"test one-step MSE {tested['test_prediction_MSE']:.3f} vs {zero_forecast_mse:.3f} for the mean"
    )
    assert tested["test_prediction_MSE"] < 0.95 * zero_forecast_mse


def test_lagrangian_update_rule() -> None:
    task = CausalDiscoveryTask(
        cdsd(6, 3),
        alm_window=2,
        alm_rtol=0.01,
        ortho_mu_init=2.0,
        ortho_mu_mult=3.0,
        ortho_omega=0.5,
    )
    h = task.model.orthogonality_residual().detach()
    task.update_lagrangian(torch.tensor(10.0))  # first loss: nothing to compare yet
    assert task.alm_updates == 0
    task.update_lagrangian(torch.tensor(9.0))  # improved by 10 %: still solving the sub-problem
    assert task.alm_updates == 0 and task.alm_gamma.abs().max() == 0
    task.update_lagrangian(torch.tensor(8.99))  # stationary: gamma += mu h, mu kept (first update)
    assert task.alm_updates == 1 and float(task.alm_mu) == 2.0
    torch.testing.assert_close(task.alm_gamma, 2.0 * h)
    assert float(task.alm_last_residual) == pytest.approx(float(h.norm()))
    task.update_lagrangian(torch.tensor(8.99))
    task.update_lagrangian(torch.tensor(8.99))  # residual did not halve: mu *= 3
    assert task.alm_updates == 2 and float(task.alm_mu) == 6.0
    torch.testing.assert_close(task.alm_gamma, 4.0 * h)

    partition = torch.zeros(1, 6, 3)
    partition[0, torch.arange(6), torch.arange(6) % 3] = 2**-0.5
    with torch.no_grad():
        task.model.mixing.copy_(partition)
    task.update_lagrangian(torch.tensor(8.0))
    assert bool(task.alm_converged)
    task.update_lagrangian(torch.tensor(8.0))
    task.update_lagrangian(torch.tensor(8.0))
    assert task.alm_updates == 2 and float(task.alm_mu) == 6.0
    with torch.no_grad():  # the residual drifts above the tolerance again: updates resume
        task.model.mixing[0, 0, 1] = 0.5
    task.update_lagrangian(torch.tensor(8.0))
    assert not bool(task.alm_converged) and task.alm_updates == 2  # one loss in the window
    task.update_lagrangian(torch.tensor(8.0))
    assert task.alm_updates == 3


def test_batch_layouts_give_the_same_loss_and_bad_batches_name_the_fix() -> None:
    torch.manual_seed(0)
    task = CausalDiscoveryTask(cdsd(12, 3, num_variables=2, num_lags=2))
    task.eval()
    x = torch.randn(4, 3, 2, 3, 4)
    with torch.no_grad():
        grid = task.model(task._windows({"x": x})).reconstruction
        flat = task.model(task._windows({"x": x.flatten(3)})).reconstruction
    assert grid == flat
    single = CausalDiscoveryTask(cdsd(12, 3), input_key="y")
    assert single._windows({"y": torch.randn(4, 3, 12)}).shape == (4, 3, 1, 12)
    with pytest.raises(KeyError, match=r"no key 'y' \(keys: \['index', 'x'\]\).*input_key"):
        single._windows({"x": x, "index": torch.arange(4)})
    with pytest.raises(ValueError, match=r"expected \(B, T, C, H, W\)"):
        single._windows({"y": torch.randn(4, 12)})
    with pytest.raises(ValueError, match="ortho_omega must be in"):
        CausalDiscoveryTask(cdsd(12, 3), ortho_omega=0.0)
    with pytest.raises(TypeError, match=r"needs a CDSD model \(YAML: `model: \{class_path: CDSD"):
        CausalDiscoveryTask(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    grouped = CausalDiscoveryTask(cdsd(12, 3), group_key="model_id")
    with pytest.raises(KeyError, match=r"no key 'model_id' \(keys: \['index', 'x'\]\).*group_key"):
        grouped._windows({"x": x[:, :, :1], "index": torch.arange(4)})


class _AssertRestored(Callback):
    def __init__(self, expected: dict[str, torch.Tensor]) -> None:
        self.expected = expected
        self.seen = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, value in self.expected.items():
            torch.testing.assert_close(
                getattr(pl_module, name), value, rtol=0, atol=0, equal_nan=True
            )
        self.seen = True


def test_lagrangian_state_and_data_stats_travel_with_checkpoints(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    seed_everything(0)
    dm = synthetic(tmp_path)
    task = CausalDiscoveryTask(cdsd(16, 3), alm_window=1, ortho_mu_mult=2.0, ortho_omega=0.01)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = Trainer(max_epochs=3, limit_train_batches=2, callbacks=[ckpt], **trainer_kwargs)
    trainer.fit(task, dm)
    names = [
        "alm_gamma",
        "alm_mu",
        "alm_last_residual",
        "alm_history",
        "alm_updates",
        "alm_converged",
    ]
    state = {name: getattr(task, name).clone() for name in names}
    assert int(state["alm_updates"]) == 3 and float(state["alm_mu"]) == 4.0
    assert state["alm_gamma"].abs().max() > 0

    # the window normaliser holds the mean and std of the training parts of the series only
    series = read_causal_synthetic(dm.path)["x"]
    *_, train_ranges = blocked_window_starts(len(series), 100, 2, dm.fractions)
    values = torch.cat([torch.as_tensor(series[lo:hi]).flatten() for lo, hi in train_ranges])
    mean, std = float(values.double().mean()), float(values.double().std(unbiased=False))
    normalizer = task.normalizers["x"]
    assert normalizer.shift.item() == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert normalizer.scale.item() == pytest.approx(std, rel=1e-5)

    loaded = CausalDiscoveryTask.load_from_checkpoint(ckpt.last_model_path, model=cdsd(16, 3))
    for name, value in state.items():
        torch.testing.assert_close(getattr(loaded, name), value, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(loaded.model.mixing, task.model.mixing)
    assert bool(loaded.normalizers["x"].fitted)
    assert torch.equal(loaded.normalizers["x"].shift, normalizer.shift)
    assert torch.equal(loaded.normalizers["x"].scale, normalizer.scale)
    batch = next(iter(dm.val_dataloader()))
    task.eval()
    loaded.eval()
    torch.testing.assert_close(
        loaded.predict_step(batch, 0)["prediction"], task.predict_step(batch, 0)["prediction"]
    )
    saved = torch.load(ckpt.last_model_path, weights_only=True)
    assert saved["CausalSyntheticDataModule"] == {"train_statistics": dm.train_statistics()}

    restored = _AssertRestored(state)
    resumed = Trainer(max_epochs=4, limit_train_batches=2, callbacks=[restored], **trainer_kwargs)
    resumed.fit(
        CausalDiscoveryTask(cdsd(16, 3), alm_window=1),
        dm,
        ckpt_path=ckpt.last_model_path,
    )
    assert restored.seen


def test_example_config_runs_through_the_cli(tmp_path: Path, run_cli: RunCLI) -> None:
    run = run_cli(
        "fit",
        EXAMPLES / "cdsd_synthetic.yaml",
        "--trainer.fast_dev_run",
        "1",
        root=str(tmp_path / "data"),
        tiny=False,
    )
    assert (tmp_path / "data" / "causal_synthetic.npz").is_file()
    assert {"train_loss", "train_ortho_residual", "val_loss", "val_SHD"} <= set(run["metrics"])


def test_climateset_example_config_runs_through_the_cli(tmp_path: Path, run_cli: RunCLI) -> None:
    root = tmp_path / "climateset"
    run_cli(
        "fit",
        EXAMPLES / "cdsd_climateset.yaml",
        "--trainer.fast_dev_run",
        "1",
        "--data.init_args.generate_grid_shape",
        "[8, 12]",
        "--data.init_args.train_years",
        "[2015, 2024]",
        "--data.init_args.test_years",
        "[2015, 2016]",
        "--model.init_args.model.init_args.num_locations",
        "96",
        root=str(root),
        tiny=False,
    )
    # outputs/CMIP6/<model>/<member>/<scenario>/<variable>/250_km/mon/<year>/<file>.nc
    written = {(p.parts[-6], p.parts[-5]) for p in (root / "outputs").rglob("*.nc")}
    assert {
        (scenario, var) for scenario in ("ssp126", "ssp370", "ssp585") for var in ("tas", "pr")
    } <= written


def test_predict_returns_one_step_forecasts_with_index(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = synthetic(tmp_path, window_length=3)
    dm.prepare_data()
    task = CausalDiscoveryTask(cdsd(16, 3))
    task.normalizers["x"].fit(dm.train_statistics())
    batches = Trainer(**trainer_kwargs).predict(task, dm)
    assert batches[0]["prediction"].shape == (16, 2, 1, 16)
    assert torch.equal(batches[0]["index"], dm.predict_dataset.starts[:16])  # first time steps
    task.eval()  # deterministic: posterior means and edge probabilities
    # the datamodule gives physical values; the task forecasts their standardised windows
    stats = dm.train_statistics()
    window = (dm.predict_dataset[0]["x"] - stats["x_mean"]) / stats["x_std"]
    expected = task(window.flatten(2)[None])
    torch.testing.assert_close(batches[0]["prediction"][0, -1], expected[0])


class _AssertRanksAgree(Callback):
    """Under DDP: W >= 0 after every step, and every rank holds the same ALM state and mixing."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        assert pl_module.model.mixing.min() >= 0

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        assert bool(pl_module.seasonal_ready) and pl_module.seasonal_std.min() > 0
        for name in ("alm_gamma", "alm_mu", "alm_updates", "alm_history", "seasonal_mean"):
            gathered = pl_module.all_gather(getattr(pl_module, name))
            torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0, equal_nan=True)
        gathered = pl_module.all_gather(pl_module.model.mixing.detach())
        assert torch.equal(gathered[0], gathered[1])
        if trainer.is_global_zero:
            torch.save(
                {"updates": pl_module.alm_updates.clone(), "mu": pl_module.alm_mu.clone()}, self.out
            )


def _ddp_task() -> CausalDiscoveryTask:
    # seasonal_period=2 on 2-step windows: each rank computes the statistics from the full train loader.
    return CausalDiscoveryTask(
        cdsd(16, 3),
        alm_window=1,
        ortho_mu_mult=2.0,
        ortho_omega=0.01,
        seasonal_period=2,
    )


@pytest.mark.ddp
@pytest.mark.slow  # ~15 s alone, ~50 s on a shared machine; the graph metrics' DDP test runs by default
@pytest.mark.skipif(sys.platform == "win32", reason="gloo ddp_spawn test runs on POSIX")
def test_ddp_keeps_mixing_non_negative_and_ranks_in_step(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    dm = synthetic(tmp_path)
    dm.prepare_data()
    out = tmp_path / "state.pt"
    trainer = Trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        enable_checkpointing=False,
        callbacks=[_AssertRanksAgree(str(out))],
        **trainer_kwargs,
    )
    trainer.fit(_ddp_task(), dm)
    state = torch.load(out, weights_only=True)
    assert int(state["updates"]) == 2 and float(state["mu"]) == 2.0  # one ALM step per validation


class _CalendarWindows(Dataset):
    """Calendar-year windows (B, 12, 2, 6) with a strong seasonal cycle that differs per cell."""

    def __init__(self, years: int) -> None:
        gen = torch.Generator().manual_seed(years)
        month = torch.arange(12.0)[:, None, None]
        cycle = (
            5 * torch.sin(2 * torch.pi * month / 12 + torch.arange(6.0))
            + torch.arange(2.0)[:, None]
        )
        noise = (1 + torch.arange(12.0)[:, None, None] / 6) * torch.randn(
            years, 12, 2, 6, generator=gen
        )
        self.x = cycle + noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"y": self.x[index], "index": torch.tensor(index)}


class _CalendarDataModule(BaseDataModule):
    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = _CalendarWindows(40)
        self.val_dataset = _CalendarWindows(8)

    def compute_train_statistics(self) -> dict[str, torch.Tensor]:
        y = self.train_dataset.x
        return {"y_mean": y.mean(), "y_std": y.std()}


def _calendar_task(period: int = 12) -> CausalDiscoveryTask:
    return CausalDiscoveryTask(cdsd(6, 2, num_variables=2), input_key="y", seasonal_period=period)


def test_seasonal_anomalies_use_training_statistics_per_month_and_cell(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    task = _calendar_task()
    train = _CalendarWindows(40)
    with pytest.raises(RuntimeError, match=r"seasonal statistics are missing; run trainer\.fit"):
        task._windows({"y": train.x})
    task.fit_seasonal_statistics(DataLoader(train, batch_size=7))  # normaliser unfitted: identity
    torch.testing.assert_close(task.seasonal_mean, train.x.mean(0))
    torch.testing.assert_close(task.seasonal_std, train.x.std(0, unbiased=False))
    anomalies = task._windows({"y": train.x})
    torch.testing.assert_close(anomalies.mean(0), torch.zeros(12, 2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        anomalies.std(0, unbiased=False), torch.ones(12, 2, 6), atol=1e-5, rtol=0
    )

    with pytest.raises(ValueError, match="never reach some phase of seasonal_period=24"):
        _calendar_task(24).fit_seasonal_statistics(DataLoader(train, batch_size=7))

    # In fit, the window normaliser is fitted first, then the seasonal statistics come from the
    # datamodule's training loader in normalised units; both go into checkpoints.
    fitted = _calendar_task()
    trainer = Trainer(max_epochs=1, limit_train_batches=2, **trainer_kwargs)
    trainer.fit(fitted, _CalendarDataModule(batch_size=8))
    mean, std = train.x.mean(), train.x.std()
    assert fitted.normalizers["y"].shift.item() == pytest.approx(float(mean))
    torch.testing.assert_close(fitted.seasonal_mean, (train.x.mean(0) - mean) / std)
    torch.testing.assert_close(fitted.seasonal_std, train.x.std(0, unbiased=False) / std)
    # the anomalies do not depend on that standardisation
    torch.testing.assert_close(fitted._windows({"y": train.x}), anomalies, atol=1e-4, rtol=0)
    path = tmp_path / "seasonal.ckpt"
    trainer.save_checkpoint(path)
    loaded = CausalDiscoveryTask.load_from_checkpoint(path, model=cdsd(6, 2, num_variables=2))
    assert bool(loaded.seasonal_ready) and torch.equal(loaded.seasonal_std, fitted.seasonal_std)
    assert torch.equal(loaded.normalizers["y"].scale, fitted.normalizers["y"].scale)


def test_group_key_standardises_each_climate_model_with_its_statistics(
    climateset_root: Path, trainer_kwargs: dict[str, Any]
) -> None:
    models = ["NorESM2-LM", "MPI-ESM1-2-HR"]
    dm = ClimateSetDataModule(
        root=str(climateset_root),
        climate_models=models,
        in_vars=["CO2_sum"],
        out_vars=["tas", "pr"],
        train_years=(2015, 2018),
        test_years=(2015, 2016),
        val_fraction=0.25,
        batch_size=4,
    )

    def task(group_key: str | None) -> CausalDiscoveryTask:
        return CausalDiscoveryTask(cdsd(96, 4, num_variables=2), input_key="y", group_key=group_key)

    grouped = task("model_id")
    fit = {"max_steps": 1, "limit_val_batches": 0, **trainer_kwargs}
    Trainer(**fit).fit(grouped, dm)
    shift, scale = grouped.normalizers["y"].shift, grouped.normalizers["y"].scale
    assert shift.shape == scale.shape == (2, 2)  # (climate models, variables)
    samples = list(dm.train_dataset)
    for model_id, name in enumerate(models):
        y = torch.stack([s["y"] for s in samples if int(s["model_id"]) == model_id])
        assert len(y) > 0, name
        ids = torch.full((len(y),), model_id)
        windows = grouped._windows({"y": y, "model_id": ids})  # (B, 12, 2, 96)
        # every climate model's windows have zero mean and unit std per variable
        per_variable = windows.transpose(1, 2).flatten(2).transpose(0, 1).flatten(1)
        torch.testing.assert_close(per_variable.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(per_variable.std(1), torch.ones(2), atol=1e-2, rtol=0)
        # the other model's statistics leave a bias 10x the tolerance above in each variable
        other = grouped._windows({"y": y, "model_id": 1 - ids})
        bias = other.transpose(1, 2).flatten(2).transpose(0, 1).flatten(1).mean(1)
        assert (bias.abs() > 1e-3).all(), bias
