"""The shared two-process setup: ddp_spawn workers exit with no live process group."""

from __future__ import annotations

import atexit
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from ddp_utils import TeardownDDPSpawnStrategy, free_port
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset


def _record_group_state(path: str) -> None:
    Path(path).write_text(str(dist.is_initialized()))


class _RecordsGroupState(LightningModule):
    """Writes, per rank, whether the process group is live at the end of testing and at exit."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(2, 1)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("value", self.layer(batch[0]).sum(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        rank = self.global_rank
        Path(self.out, f"during{rank}.txt").write_text(str(dist.is_initialized()))
        atexit.register(_record_group_state, str(Path(self.out, f"exit{rank}.txt")))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=1)


def test_ddp_spawn_name_means_the_teardown_strategy() -> None:
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    assert isinstance(trainer.strategy, TeardownDDPSpawnStrategy)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform == "win32", reason="gloo ddp_spawn test runs on POSIX")
def test_ddp_spawn_workers_exit_without_a_live_group(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    kwargs = trainer_kwargs | {"devices": 2, "strategy": "ddp_spawn", "deterministic": False}
    Trainer(**kwargs).test(_RecordsGroupState(str(tmp_path)))
    for rank in (0, 1):
        assert Path(tmp_path, f"during{rank}.txt").read_text() == "True"
        assert Path(tmp_path, f"exit{rank}.txt").read_text() == "False"
