"""What a user sees from ``lightning-climate``: fast help, threads, quiet output, a final summary."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_climate import __version__
from lightning_climate.cli import ClimateCLI, available_cores, final_metrics_table
from lightning_climate.main import main

#: values seen inside the last fit by _TinyModule (same process: no spawn)
SEEN: dict[str, Any] = {}


class _TinyData(LightningDataModule):
    """4 samples of y = 2x, one batch each for training and validation."""

    def train_dataloader(self) -> DataLoader:
        x = torch.linspace(0, 1, 4)[:, None]
        return DataLoader(TensorDataset(x, 2 * x), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()


class _TinyModule(LightningModule):
    """A linear fit that records the thread count and its last validation loss in SEEN."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.sleep = sleep
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        SEEN["threads"] = torch.get_num_threads()
        time.sleep(self.sleep)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        SEEN["val_loss"] = loss.item()
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--model=test_cli_main._TinyModule",
        "--data=test_cli_main._TinyData",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom lightning_climate.main import main\n"
        "main(['--help']); main(['--version']); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: lightning-climate")
    for subcommand in ("fit", "validate", "test", "predict"):
        assert f"\n    {subcommand} " in out
    assert out.splitlines()[-2:] == [__version__, "False"]


def test_subcommand_help_still_comes_from_lightning(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--trainer.max_time" in capsys.readouterr().out


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def text(self) -> str:
        text, self.messages = "\n".join(self.messages), []
        return text


def test_fit_prints_max_epochs_and_final_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _fit_args(tmp_path, "--trainer.max_epochs=2", "--trainer.logger=true")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    filters, logger_filters = list(warnings.filters), list(rank_zero.filters)
    logged = _Messages()
    rank_zero.addHandler(logged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(args)
    out = capsys.readouterr()
    assert "Training finished: max_epochs=2 reached." in out.out
    table = out.out.split("Last logged metrics:\n")[1]
    assert f"val_loss    {SEEN['val_loss']:.6g}" in table
    assert "train_loss" in table
    # Lightning's tips and its small-data logging warning are not shown ...
    text = logged.text()
    assert "Tip:" not in text and "max_epochs=2` reached" in text
    assert not [w for w in caught if "logging interval" in str(w.message)]
    # ... and nothing stays changed in the caller's process.
    assert warnings.filters == filters
    assert rank_zero.filters == logger_filters
    # The same run without main()'s environment shows both (so the checks above mean something).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ClimateCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    rank_zero.removeHandler(logged)
    assert "Tip:" in logged.text()
    assert [w for w in caught if "logging interval" in str(w.message)]


def test_fit_says_when_max_time_cut_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        _fit_args(
            tmp_path,
            "--model.sleep=0.3",
            "--trainer.max_epochs=1000",
            "--trainer.max_time=00:00:00:01",
        )
    )
    out = capsys.readouterr().out
    assert "Training stopped because max_time (0:00:01) was reached after " in out
    epochs = int(out.split("was reached after ")[1].split(" of ")[0])
    assert 1 <= epochs < 1000
    assert "of max_epochs=1000 epochs: the metrics are those of a shorter run" in out


@pytest.mark.parametrize("omp", [None, "1"])
def test_threads_follow_available_cores_unless_omp_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, omp: str | None
) -> None:
    before = torch.get_num_threads()
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    main(_fit_args(tmp_path, "--trainer.max_epochs=1"))
    assert SEEN["threads"] == (available_cores() if omp is None else before)
    assert torch.get_num_threads() == before


def test_available_cores_respects_affinity() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_progress_bar_shows_small_losses(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    cli = ClimateCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args={
            "model": {"class_path": "test_cli_main._TinyModule"},
            "data": {"class_path": "test_cli_main._TinyData"},
            "trainer": {"default_root_dir": str(tmp_path), "logger": False},
        },
    )
    fmt = cli.trainer.progress_bar_callback.theme.metrics_format
    assert f"{4.2e-4:{fmt}}" == "0.00042"
    assert f"{4.2e-4:.3f}" == "0.000"  # what Lightning's default showed


def test_final_metrics_table() -> None:
    table = final_metrics_table(
        {"val_loss": torch.tensor(1.5e-5), "epoch": 3, "per_class": torch.ones(3), "name": "x"}
    )
    assert table.splitlines() == [
        "metric    value",
        "--------  ------------",
        "epoch     3",
        "val_loss  1.5e-05",
    ]
    assert final_metrics_table({}) == ""


def test_importing_one_datamodule_leaves_the_others_unimported() -> None:
    """The package __init__s are lazy: digits users do not import PyG (nor its FutureWarning)."""
    code = (
        "import sys\n"
        "from lightning_climate.datamodules import DigitsDataModule\n"
        "from lightning_climate.datasets import ImageClassificationDataset\n"
        "assert DigitsDataModule.__module__ == 'lightning_climate.datamodules.digits'\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch_geometric', 'lmdb', "
        "'lightning_climate.datamodules.oc20', 'lightning_climate.datasets.oc20'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
