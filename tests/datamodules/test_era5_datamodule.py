from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from lightning_climate.callbacks import ConstraintMonitor
from lightning_climate.datamodules import ERA5DataModule
from lightning_climate.layers import SoftmaxConstraint
from lightning_climate.metrics import ConstraintViolation

DATA = Path(__file__).parents[1] / "data" / "era5"
SAMPLE = str(DATA / "era5_sample.nc")
RANGES = {
    "train_range": ("2017-01-01T00", "2017-01-01T12"),
    "val_range": ("2017-01-02T00", "2017-01-02T00"),
    "test_range": ("2017-01-02T12", "2017-01-02T12"),
}


def _datamodule(**kwargs: Any) -> ERA5DataModule:
    args = {
        "paths": SAMPLE,
        "variables": ["t", "z"],
        "levels": [850],
        "factor": 2,
        "normalization": "minmax",
        **RANGES,
    }
    return ERA5DataModule(**{**args, **kwargs})


class _TinySR(LightningModule):
    """Nearest upsampling + one conv + the softmax constraint: enough to run fit/test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.constraint = SoftmaxConstraint()

    def forward(self, lr: Tensor) -> Tensor:
        return self.constraint(self.conv(F.interpolate(lr, scale_factor=2)), lr)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.mse_loss(self(batch["lr"]), batch["hr"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch["lr"]), batch["hr"]))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("test_loss", F.mse_loss(self(batch["lr"]), batch["hr"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_splits_by_date_and_sample_layout() -> None:
    dm = _datamodule(batch_size=4)
    dm.setup("fit")
    assert dm.channels == ["t850", "z850"]
    times = {s: set(getattr(dm, f"{s}_dataset").times.tolist()) for s in ("train", "val", "test")}
    assert len(times["train"]) == 2 and len(times["val"]) == 1 and len(times["test"]) == 1
    assert not (times["train"] & times["val"]) and not (times["val"] & times["test"])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"lr", "hr", "index", "time", "lat"}
    assert batch["lat"].shape == (4, 60) and bool((batch["lat"].diff(dim=1) > 0).all())
    assert batch["hr"].shape == (4, 2, 60, 120) and batch["lr"].shape == (4, 2, 30, 60)
    assert batch["hr"].dtype == batch["lr"].dtype == torch.float32
    assert batch["index"].dtype == torch.int64


def test_statistics_from_training_split_only() -> None:
    dm = _datamodule()
    dm.setup("fit")
    train = torch.stack([dm.train_dataset[i]["hr"] for i in range(len(dm.train_dataset))])
    # min-max of the training split maps it exactly onto [0, 1]
    torch.testing.assert_close(train.amin(dim=(0, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(train.amax(dim=(0, 2, 3)), torch.ones(2), atol=1e-6, rtol=0)
    # reference: physical min/max over the training times computed with xarray
    import xarray as xr

    ref = (
        xr.open_dataset(SAMPLE)["t"]
        .sel(isobaricInhPa=850)
        .isel(time=slice(0, 2), latitude=slice(1, None))
    )
    torch.testing.assert_close(
        dm.normalizer.offset[0], torch.tensor(float(ref.min())), rtol=1e-6, atol=0
    )
    stats = dm.train_statistics()
    torch.testing.assert_close(stats["min"], torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["max"], torch.ones(2), atol=1e-6, rtol=0)
    raw = _datamodule(normalization="none")
    raw.setup("fit")
    torch.testing.assert_close(raw.train_statistics()["min"][0], torch.tensor(float(ref.min())))
    # the test split is normalised with the same map, so it is not exactly [0, 1]
    test = torch.stack([dm.test_dataset[i]["hr"] for i in range(len(dm.test_dataset))])
    assert not torch.allclose(test.amax(dim=(0, 2, 3)), torch.ones(2))


def test_lowres_is_block_mean_of_normalised_highres() -> None:
    for normalization in ("minmax", "zscore", "scale", "none"):
        dm = _datamodule(normalization=normalization, factor=4, variables=["z"], levels=[500])
        dm.setup("fit")
        metric = ConstraintViolation("max")
        for batch in dm.val_dataloader():
            metric.update(batch["hr"], batch["lr"])
        scale = 1.0 if normalization != "none" else 6e4
        assert metric.compute() < 1e-6 * scale


def test_state_dict_round_trip_and_checkpoint(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    dm = _datamodule(batch_size=5)
    model = _TinySR()
    monitor = ConstraintMonitor()
    trainer = Trainer(max_steps=2, limit_val_batches=1, callbacks=[monitor], **trainer_kwargs)
    trainer.fit(model, datamodule=dm)
    # hr is in [0, 1] from min-max scaling, so the softmax constraint applies; its violation is ~0
    assert monitor.history[-1]["max"] < 1e-6
    ckpt_path = tmp_path / "era5.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    saved = ckpt[type(dm).__qualname__]
    assert saved["channels"] == ["t850", "z850"]
    torch.testing.assert_close(saved["offset"], dm.normalizer.offset)
    # a datamodule whose own training range differs (disjoint from its test range) gets the
    # checkpoint's statistics back
    other = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    Trainer(**trainer_kwargs).test(model, datamodule=other, ckpt_path=ckpt_path, verbose=False)
    torch.testing.assert_close(other.normalizer.offset, dm.normalizer.offset)
    torch.testing.assert_close(other.normalizer.scale, dm.normalizer.scale)
    fresh = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    fresh.setup("fit")
    assert not torch.equal(fresh.normalizer.offset, dm.normalizer.offset)
    # load before setup: no refit
    early = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    early.load_state_dict(dm.state_dict())
    early.setup("test")
    assert torch.equal(early.normalizer.scale, dm.normalizer.scale)
    assert torch.equal(early.train_statistics()["max"], dm.train_statistics()["max"])


def test_errors() -> None:
    with pytest.raises(RuntimeError, match=r"call setup\('fit'\)"):
        _datamodule().train_statistics()
    with pytest.raises(ValueError, match="normalization must be"):
        _datamodule(normalization="robust")
    dm = _datamodule()
    dm.setup("fit")
    wrong = _datamodule(variables=["t"])
    wrong.setup("fit")
    with pytest.raises(ValueError, match="same variables and levels"):
        wrong.load_state_dict(dm.state_dict())
    with pytest.raises(FileNotFoundError, match=r"python -m lightning_climate\.datasets\.era5"):
        _datamodule(paths="/nonexistent/era5/*.nc").setup("fit")
    assert np.isfinite(dm.normalizer.scale.numpy()).all()
