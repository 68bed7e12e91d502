"""Every config of tests/conf trains, validates and tests through the CLI, under one contract.

For each config the test checks the rules of docs/architecture.md: every logged name is
``{stage}_{metric}`` or ``{stage}_{loader}_{metric}`` with no doubled stage; the datamodule is a
``BaseDataModule`` whose training statistics are named after batch keys, fill the task's
normalisers and travel in the checkpoint; and a test run from the checkpoint logs test metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ERA5_SAMPLE, RunCLI
from lightning.pytorch import LightningModule

from lightning_climate.datamodules import BaseDataModule

CONF = Path(__file__).parent / "conf"
STAGES = ("train", "val", "test")


@pytest.fixture
def data_roots(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The ``root`` of each config's data, from the shared fixtures (generated lazily)."""
    lazy = {
        "navier_stokes": lambda: request.getfixturevalue("navier_stokes_file"),
        "era5": lambda: ERA5_SAMPLE,
        "climateset": lambda: request.getfixturevalue("climateset_root"),
        "cdsd": lambda: tmp_path / "causal",
        "oc20": lambda: request.getfixturevalue("oc20_root"),
    }
    return {
        prefix: str(make()) for prefix, make in lazy.items() if request.node.name.find(prefix) >= 0
    }


def check_stages(metrics: dict[str, float], stages: tuple[str, ...]) -> None:
    """Every stage run logged, with its loss (``run_cli`` already checked each name's form)."""
    names = [k for k in metrics if k not in ("epoch", "step")]
    assert {k.split("_")[0] for k in names} == set(stages)
    assert all(f"{stage}_loss" in metrics for stage in stages if stage != "test")


def check_datamodule_contract(dm: BaseDataModule, task: LightningModule) -> None:
    assert isinstance(dm, BaseDataModule)
    assert dm.channels is None or all(isinstance(c, str) for c in dm.channels)
    assert dm.latitudes is None or isinstance(dm.latitudes, torch.Tensor)
    stats = dm.train_statistics()
    batch = next(iter(dm.train_dataloader()))
    keys = set(batch.keys())
    for name in stats:
        key, statistic = name.rsplit("_", 1)
        assert key in keys and statistic in ("mean", "std", "min", "max"), name
    for normalizer in task.normalizers.values():  # type: ignore[union-attr]
        assert bool(normalizer.fitted)
        first, _ = normalizer.statistic_names
        shift = stats[first].to(normalizer.shift)
        if normalizer.share_channels:
            shift = shift.min().expand_as(shift)
        assert torch.equal(normalizer.shift, shift)
    saved = dm.state_dict()
    assert set(saved["train_statistics"]) == set(stats)
    changed = {k: v.clone() for k, v in saved["train_statistics"].items()}
    name = next(iter(changed))
    changed[name] = torch.zeros(7, 3)
    with pytest.raises(ValueError, match=f"statistic '{name}' has shape"):
        dm.load_state_dict({"train_statistics": changed})


CONFIGS = sorted(p.name for p in CONF.glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fits_and_tests_under_one_contract(
    config: str, data_roots: dict[str, str], tmp_path: Path, run_cli: RunCLI
) -> None:
    torch.manual_seed(0)
    root = next(iter(data_roots.values()), None)
    fit = run_cli("fit", CONF / config, root=root)
    check_stages(fit["metrics"], ("train", "val"))
    check_datamodule_contract(fit["datamodule"], fit["task"])
    (ckpt,) = tmp_path.rglob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    (dm_state,) = [v for k, v in state.items() if k.endswith("DataModule")]
    assert set(dm_state["train_statistics"]) == set(fit["datamodule"].train_statistics())
    test = run_cli("test", CONF / config, "--ckpt_path", str(ckpt), root=root)
    check_stages(test["metrics"], ("test",))
    for normalizer, loaded in zip(
        fit["task"].normalizers.values(), test["task"].normalizers.values(), strict=True
    ):
        assert torch.equal(normalizer.shift, loaded.shift)


def test_soft_constraint_loss_is_the_weighted_sum(navier_stokes_file: Path) -> None:
    from lightning_climate.losses import soft_constraint_loss
    from lightning_climate.models import SRCNN
    from lightning_climate.tasks import DownscalingTask

    task = DownscalingTask(SRCNN(factor=2, hidden_channels=4), loss="soft_constraint", alpha=0.3)
    pred, target, lowres = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)
    fit = torch.nn.functional.mse_loss(pred, target)
    penalty = torch.nn.functional.mse_loss(torch.nn.functional.avg_pool2d(pred, 2), lowres)
    torch.testing.assert_close(task._loss(pred, target, lowres), 0.7 * fit + 0.3 * penalty)
    torch.testing.assert_close(
        soft_constraint_loss(pred, target, lowres, 0.3), 0.7 * fit + 0.3 * penalty
    )
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        DownscalingTask(SRCNN(), loss="soft_constraint", alpha=1.5)


def test_ordering_constraint_from_yaml_orders_every_prediction(run_cli: RunCLI) -> None:
    from lightning_climate.datamodules import ERA5DataModule

    fit = run_cli("fit", CONF / "era5_ordering.yaml", root=str(ERA5_SAMPLE))
    dm, task = fit["datamodule"], fit["task"]
    assert isinstance(dm, ERA5DataModule) and dm.channels == ["t850", "t500"]
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        pred = task(batch["lr"], 2)
    assert bool((pred[:, 1] <= pred[:, 0]).all())
    assert type(task.model.constraint).__name__ == "OrderingConstraint"
