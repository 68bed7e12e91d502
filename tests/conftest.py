"""Fixtures shared by every test module."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

# The suite runs on 2 cores; several DDP tests start 2 processes each, so keep each one
# single-threaded. Set before torch is imported (torch reads it once), so this process and the
# subprocesses it starts compute with the same thread count (same float reductions).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib
import pytest
import torch
from ddp_utils import register_ddp_spawn
from lightning.pytorch import Callback, LightningModule, Trainer

matplotlib.use("agg")
# Lightning stops propagating its log records when imported before logging has a handler (as here,
# at conftest import); let them reach pytest's caplog again.
logging.getLogger("lightning.pytorch").propagate = True


# strategy="ddp_spawn" workers destroy their gloo group before exiting (see tests/ddp_utils.py).
register_ddp_spawn()


@pytest.fixture(autouse=True)
def _fresh_master_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's ddp_spawn Trainer picks a free port; Lightning leaves MASTER_PORT set otherwise."""
    monkeypatch.delenv("MASTER_PORT", raising=False)


@pytest.fixture(autouse=True)
def _close_lmdb_environments() -> Iterator[None]:
    """Close the OC20 reader's cached LMDB environments after each test.

    py-lmdb allows one environment per file and process, and it recognises files by inode: once a
    test's temporary folder is deleted, a later test's new file can get the same inode and would be
    refused while the old environment stays cached.
    """
    yield
    module = sys.modules.get("lightning_climate.datasets.oc20_env")
    if module is not None:
        module.close_envs()


@pytest.fixture
def trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    """Quiet, deterministic CPU Trainer arguments writing into ``tmp_path``."""
    return {
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": True,
    }


@pytest.fixture(scope="session")
def navier_stokes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated Navier–Stokes file: 8 trajectories, 32², 4 snapshots (ν=1e-3, t=1)."""
    from lightning_climate.datasets.navier_stokes import generate_navier_stokes

    path = tmp_path_factory.mktemp("navier_stokes") / "ns_tiny.h5"
    return generate_navier_stokes(
        path,
        num_trajectories=8,
        resolution=32,
        t_final=1.0,
        record_steps=4,
        dt=1e-2,
        progress=False,
    )


#: climate models and grid of the shared generated ClimateSet tree
CLIMATESET_MODELS = ["NorESM2-LM", "MPI-ESM1-2-HR"]
CLIMATESET_GRID = (8, 12)


@pytest.fixture(scope="session")
def climateset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated ClimateSet tree: 2 models, 4 scenarios, 2015–2024, 8×12 grid."""
    from lightning_climate.datasets import generate_climateset

    path = tmp_path_factory.mktemp("climateset")
    scenarios = ["ssp126", "ssp245", "ssp370", "ssp585"]
    return generate_climateset(
        path,
        CLIMATESET_MODELS,
        scenarios,
        range(2015, 2025),
        grid_shape=CLIMATESET_GRID,
        progress=False,
    )


@pytest.fixture(scope="session")
def climateset_co2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tree cumulative CO2 can be summed on: NorESM2-LM, 8×12 grid.

    ssp126/ssp245/ssp585 2015–2020 and historical 2010–2014 with every variable, plus the
    ``CO2_sum`` maps of all historical years 1850–2014.
    """
    from lightning_climate.datasets import generate_climateset
    from lightning_climate.datasets.climateset import HISTORICAL_YEARS

    path = tmp_path_factory.mktemp("climateset_co2")
    model = CLIMATESET_MODELS[:1]
    for scenarios, years in (
        (["ssp126", "ssp245", "ssp585"], range(2015, 2021)),
        (["historical"], range(2010, 2015)),
    ):
        generate_climateset(
            path, model, scenarios, years, grid_shape=CLIMATESET_GRID, progress=False
        )
    return generate_climateset(
        path,
        model,
        ["historical"],
        HISTORICAL_YEARS,
        grid_shape=CLIMATESET_GRID,
        in_vars=["CO2_sum"],
        out_vars=[],
        progress=False,
    )


def z_rotation(angle: float) -> torch.Tensor:
    """Float64 rotation by ``angle`` (radians) about the z axis, for invariance tests."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def central_difference_force(
    model: Callable[[Any], dict[str, torch.Tensor]],
    data: Any,
    atom: int,
    axis: int,
    graph: int,
    step: float = 1e-5,
) -> float:
    """``-dE/dx`` of graph ``graph`` for a move of ``atom`` along ``axis``, by central differences."""
    energies = []
    for sign in (1, -1):
        moved = data.clone()
        moved.pos = data.pos.clone()
        moved.pos[atom, axis] += sign * step
        energies.append(model(moved)["energy"][graph].item())
    return -(energies[0] - energies[1]) / (2 * step)


@pytest.fixture(scope="session")
def oc20_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 generated adsorbate-on-slab systems relaxed with EMT, IS2RE and S2EF LMDBs under ``root``."""
    from lightning_climate.datasets import generate_oc20

    root = tmp_path_factory.mktemp("oc20")
    generate_oc20(root, num_systems=12, seed=2, size=(2, 2, 2), steps=20, progress=False)
    return root


#: the real ERA5 sample shipped with the tests (see tests/data/era5/README)
ERA5_SAMPLE = Path(__file__).parent / "data" / "era5" / "era5_sample.nc"
#: three real OC20 IS2RE systems shipped with the tests (see tests/data/oc20/README)
OC20_SAMPLE = Path(__file__).parent / "data" / "oc20" / "is2re_bs3.npz"
#: the example configs
EXAMPLES = Path(__file__).parents[1] / "examples"


class RecordRun(Callback):
    """Keeps what a CLI run logged, with its datamodule and module (added by ``run_cli``)."""

    runs: ClassVar[list[dict[str, Any]]] = []

    def _record(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        RecordRun.runs.append(
            {
                "stage": stage,
                "metrics": metrics,
                "datamodule": trainer.datamodule,
                "task": pl_module,
            }
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record("fit", trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record("test", trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record("predict", trainer, pl_module)


#: every logged name: ``{stage}_{metric}`` or ``{stage}_{loader}_{metric}``, never a doubled stage
METRIC_NAME = re.compile(r"^(train|val|test)_(?!(train|val|test)_)\S+$")

#: ``run_cli(subcommand, config, *extra, root=None, tiny=True) -> record``
RunCLI = Callable[..., dict[str, Any]]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCLI:
    """Run ``lightning-climate <subcommand> --config <config>`` quietly in ``tmp_path``.

    The one harness of every CLI test: ``root`` sets ``data.init_args.root``; ``tiny`` limits
    every stage to two batches. Returns what :class:`RecordRun` kept (``metrics``, ``datamodule``,
    ``task``) for fit, test and predict runs, or ``{}``. Every run it makes checks the naming
    rule of docs/architecture.md on all logged names, so each example test asserts it too.
    """
    from lightning_climate.main import main

    def run(
        subcommand: str, config: Path, *extra: str, root: str | None = None, tiny: bool = True
    ) -> dict[str, Any]:
        args = [subcommand, "--config", str(config)]
        if root is not None:
            args += ["--data.init_args.root", str(root)]
        args += [
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.callbacks+=conftest.RecordRun",
        ]
        if tiny:
            for stage in ("train", "val", "test", "predict"):
                args += [f"--trainer.limit_{stage}_batches", "2"]
        RecordRun.runs.clear()
        main([*args, *extra])
        record = RecordRun.runs[-1] if RecordRun.runs else {}
        names = [k for k in record.get("metrics", {}) if k not in ("epoch", "step")]
        bad = [k for k in names if not METRIC_NAME.match(k)]
        assert not bad, (
            f"{config.name}: names break the {{stage}}_[{{loader}}_]{{metric}} rule: {bad}"
        )
        return record

    return run


@pytest.fixture
def hashed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files that ``integrity.verify`` hashes from now on, in order."""
    from lightning_climate.datasets import integrity

    calls: list[str] = []
    digest = integrity._digest

    def counting(path: Path, algorithm: str, progress: Any = None) -> str:
        calls.append(path.name)
        return digest(path, algorithm, progress)

    monkeypatch.setattr(integrity, "_digest", counting)
    return calls
