from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import RunCLI

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "tests" / "data" / "era5" / "era5_sample.nc"


def _run(run_cli: RunCLI, config: str, tmp_path: Path, *extra: str) -> dict:
    """One training step and one validation batch (like fast_dev_run, but writing a checkpoint)."""
    run_cli(
        "fit",
        ROOT / "examples" / config,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        *extra,
        root=str(SAMPLE),
    )
    return torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)


def _history(ckpt: dict) -> list[dict[str, float]]:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ConstraintMonitor")]
    return state["history"]


@pytest.mark.parametrize("constraint", ["none", "add", "mult", "softmax", "scadd"])
def test_era5_srcnn_example(constraint: str, tmp_path: Path, run_cli: RunCLI) -> None:
    ckpt = _run(run_cli, "era5_srcnn.yaml", tmp_path, "--model.init_args.constraint", constraint)
    # the datamodule's training statistics (kelvin) travel with the checkpoint
    assert 200 < float(ckpt["ERA5DataModule"]["train_statistics"]["hr_min"][0]) < 240
    # violation in kelvin: float32 round-off of ~250 K values for constrained models
    violation = _history(ckpt)[-1]["max"]
    if constraint == "none":
        assert violation > 1e-2
    else:
        assert violation < 1e-3


def test_era5_dfno_softmax_example(tmp_path: Path, run_cli: RunCLI) -> None:
    ckpt = _run(run_cli, "era5_dfno_softmax.yaml", tmp_path)
    assert _history(ckpt)[-1]["max"] < 1e-3
