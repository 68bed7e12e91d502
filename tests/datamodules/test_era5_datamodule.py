from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from lightning_climate.callbacks import ConstraintMonitor
from lightning_climate.datamodules import ERA5DataModule
from lightning_climate.layers import Normalizer, SoftmaxConstraint
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
        "root": SAMPLE,
        "variables": ["t", "z"],
        "levels": [850],
        "factor": 2,
        **RANGES,
    }
    return ERA5DataModule(**{**args, **kwargs})


class _TinySR(LightningModule):
    """Nearest upsampling, one conv and the softmax constraint on min-max scaled fields (scaled
    with the training statistics), in physical units outside: enough to run fit/test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.constraint = SoftmaxConstraint()
        self.norm = Normalizer("hr", "minmax")

    def on_fit_start(self) -> None:
        self.norm.fit(self.trainer.datamodule.train_statistics())

    def forward(self, lr: Tensor) -> Tensor:
        scaled = self.norm(lr)
        return self.norm.inverse(
            self.constraint(self.conv(F.interpolate(scaled, scale_factor=2)), scaled)
        )

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(self.norm(self(batch["lr"])), self.norm(batch["hr"]))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

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


def test_batches_are_physical_units() -> None:
    import xarray as xr

    dm = _datamodule(batch_size=4)
    dm.setup("fit")
    sample = dm.train_dataset[0]["hr"][0]
    # rows run south to north, without 90N so the grid divides by the factor; values are kelvin
    ref = xr.open_dataset(SAMPLE)["t"].sel(isobaricInhPa=850).sortby("latitude")
    ref = ref.isel(latitude=slice(None, -1))
    fields = torch.as_tensor(ref.values[:, :2], dtype=torch.float32).flatten(0, 1)  # train times
    assert any(torch.equal(sample, field) for field in fields)
    assert 200 < float(sample.min()) and float(sample.max()) < 320


def test_statistics_from_training_split_only() -> None:
    dm = _datamodule()
    dm.setup("fit")
    train = torch.stack([dm.train_dataset[i]["hr"] for i in range(len(dm.train_dataset))]).double()
    stats = dm.train_statistics()
    assert set(stats) == {"hr_min", "hr_max", "hr_mean", "hr_std"}
    torch.testing.assert_close(stats["hr_min"], train.amin(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_max"], train.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_mean"], train.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["hr_std"], train.std(dim=(0, 2, 3), correction=0))
    # min-max with these statistics maps the training split exactly onto [0, 1]
    norm = Normalizer("hr", "minmax")
    norm.fit(stats)
    scaled = norm(train.float())
    torch.testing.assert_close(scaled.amin(dim=(0, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled.amax(dim=(0, 2, 3)), torch.ones(2), atol=1e-6, rtol=0)
    # reference: physical min over the training times computed with xarray
    import xarray as xr

    ref = (
        xr.open_dataset(SAMPLE)["t"]
        .sel(isobaricInhPa=850)
        .isel(time=slice(0, 2), latitude=slice(1, None))
    )
    assert float(stats["hr_min"][0]) == pytest.approx(float(ref.min()), rel=1e-6)
    # the test split is scaled with the same map, so it is not exactly [0, 1]
    test = torch.stack([dm.test_dataset[i]["hr"] for i in range(len(dm.test_dataset))])
    assert not torch.allclose(norm(test).amax(dim=(0, 2, 3)), torch.ones(2))
    # computed on first use, also without setup
    lazy = _datamodule().train_statistics()
    for key, value in stats.items():
        torch.testing.assert_close(lazy[key], value)


def test_lowres_is_block_mean_of_highres_physical_and_normalised() -> None:
    dm = _datamodule(factor=4, variables=["z"], levels=[500])
    dm.setup("fit")
    stats = dm.train_statistics()
    hr_scale = float(stats["hr_max"].abs().max())
    for method in ("minmax", "zscore", None):
        norm = None if method is None else Normalizer("hr", method)
        if norm is not None:
            norm.fit(stats)
        metric = ConstraintViolation("max")
        for batch in dm.val_dataloader():
            hr, lr = batch["hr"], batch["lr"]
            if norm is not None:  # an affine map per channel keeps the block mean
                hr, lr = norm(hr), norm(lr)
            metric.update(hr, lr)
        # float32 rounding of the physical values (~6e4), in the units of the comparison
        scale = 1.0 if norm is None else float(norm.scale.min())
        assert metric.compute() < 1e-6 * hr_scale / scale, method


def test_state_dict_round_trip_and_checkpoint(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    dm = _datamodule(batch_size=5)
    model = _TinySR()
    monitor = ConstraintMonitor()
    trainer = Trainer(max_steps=2, limit_val_batches=1, callbacks=[monitor], **trainer_kwargs)
    trainer.fit(model, datamodule=dm)
    # the softmax constraint applies on min-max scaled fields; in physical units the violation
    # is float32 rounding, ~1e-6 of the largest value
    stats = dm.train_statistics()
    assert 0 < monitor.history[-1]["max"] < 1e-6 * float(stats["hr_max"].max())
    ckpt_path = tmp_path / "era5.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    saved = ckpt[type(dm).__qualname__]["train_statistics"]
    assert set(saved) == {"hr_min", "hr_max", "hr_mean", "hr_std"}
    torch.testing.assert_close(saved["hr_min"], stats["hr_min"])
    # a datamodule whose own training range differs gets the checkpoint's statistics back
    other = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    Trainer(**trainer_kwargs).test(model, datamodule=other, ckpt_path=ckpt_path, verbose=False)
    for key, value in stats.items():
        torch.testing.assert_close(other.train_statistics()[key], value)
    fresh = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    assert not torch.equal(fresh.train_statistics()["hr_min"], stats["hr_min"])
    # load before setup: no recomputation
    early = _datamodule(train_range=("2017-01-02T00", "2017-01-02T00"), val_range=None)
    early.load_state_dict(dm.state_dict())
    early.setup("test")
    assert torch.equal(early.train_statistics()["hr_max"], stats["hr_max"])


def test_checkpoint_with_other_variables_is_refused() -> None:
    dm = _datamodule()
    dm.setup("fit")
    dm.train_statistics()
    wrong = _datamodule(variables=["t"])
    wrong.setup("fit")
    with pytest.raises(
        ValueError, match=r"'hr_min' has shape \(2,\), this configuration expects \(1,\)"
    ):
        wrong.load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="statistics are \\['hr_max', 'hr_min'\\]"):
        wrong.load_state_dict(
            {
                "train_statistics": {
                    k: v
                    for k, v in dm.state_dict()["train_statistics"].items()
                    if k.endswith(("min", "max"))
                }
            }
        )


def test_checkpoint_loaded_before_setup_is_checked_on_first_use() -> None:
    saved = _datamodule().train_statistics()
    early = _datamodule(variables=["t"])
    early.load_state_dict({"train_statistics": saved})  # channels unknown before setup
    early.setup("test")
    with pytest.raises(
        ValueError, match=r"'hr_min' has shape \(2,\), this configuration expects \(1,\)"
    ):
        early.train_statistics()


def test_deprecated_arguments() -> None:
    with pytest.warns(DeprecationWarning, match=r"paths=\.\.\.\) is deprecated.*use root="):
        old = ERA5DataModule(paths=SAMPLE, variables=["t"], levels=[850], **RANGES)
    assert old.root == [SAMPLE]
    new = _datamodule(variables=["t"])
    torch.testing.assert_close(old.train_statistics(), new.train_statistics())
    with pytest.warns(DeprecationWarning, match=r"normalization=\.\.\.\) is deprecated"):
        none = _datamodule(normalization="none")
    assert none.root == [SAMPLE]
    for removed in ("minmax", "zscore", "scale", "robust"):
        with (
            pytest.warns(DeprecationWarning),
            pytest.raises(
                ValueError,
                match=rf"normalization='{removed}'\) is no longer supported.*Remove the argument",
            ),
        ):
            _datamodule(normalization=removed)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m lightning_climate\.datasets\.era5"):
        _datamodule(root="/nonexistent/era5/*.nc").setup("fit")
    with pytest.raises(ValueError, match="patch_size=3 must be a positive multiple of factor=2"):
        _datamodule(patch_size=3)
    empty = _datamodule(train_range=("1990-01-01", "1990-01-02"))
    with pytest.raises(
        ValueError,
        match=r"no time step .* in time_range \(.1990-01-01., .1990-01-02.\); the files cover 2017",
    ):
        empty.train_statistics()
    dm = _datamodule()
    assert all(bool(torch.isfinite(v).all()) for v in dm.train_statistics().values())
