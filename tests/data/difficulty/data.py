"""Write ``netcdf_v0.nc``: a score file in the NetCDF layout of DifficultyScores before the Zarr store.

Run at commit 634f620 (the last version writing NetCDF), from the repository root::

    PYTHONPATH=$PWD python tests/data/difficulty/data.py

Two records (epochs 0 and 1) of loss, accuracy and el2n on the first 20 sklearn digits; the
analysis must keep reading such files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_climate.callbacks import DifficultyScores

OUT = Path(__file__).with_name("netcdf_v0.nc")


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        digits = load_digits()
        images = torch.tensor(digits.images[:20] / 16.0, dtype=torch.float32)
        samples = [
            {
                "image": images[i],
                "label": torch.tensor(int(digits.target[i])),
                "index": torch.tensor(i),
            }
            for i in range(20)
        ]
        return DataLoader(samples, batch_size=8)


if __name__ == "__main__":
    OUT.unlink(missing_ok=True)
    torch.manual_seed(0)
    scorer = DifficultyScores(
        scores=["loss", "accuracy", "el2n"], path=str(OUT), run_attrs={"architecture": "linear"}
    )
    with tempfile.TemporaryDirectory() as root:
        Trainer(
            max_epochs=2,
            callbacks=[scorer],
            default_root_dir=root,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(Tiny())
    print(OUT, OUT.stat().st_size)
