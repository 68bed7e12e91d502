from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.callbacks import ConstraintMonitor


class _PairDataset(Dataset):
    """8 fixed (lr, hr) samples in the datamodule layout."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.lr = torch.randn(8, 2, 4, 4, generator=g)

    def __len__(self) -> int:
        return len(self.lr)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        lr = self.lr[i]
        hr = lr.repeat_interleave(2, -2).repeat_interleave(2, -1)
        return {"lr": lr, "hr": hr, "index": torch.tensor(i)}


class _FactorModel(LightningModule):
    """Called as forward(lr, factor), like DownscalingTask: prediction lr upsampled + 1."""

    def forward(self, lr: Tensor, factor: int) -> Tensor:
        assert isinstance(factor, int)
        return lr.repeat_interleave(factor, -2).repeat_interleave(factor, -1) + 1

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pass


class _ScaledNearest(LightningModule):
    """Prediction 1.5 * nearest-upsampled lr: violation = 0.5 * |lr| exactly."""

    def __init__(self, return_pred: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.5))
        self.return_pred = return_pred

    def forward(self, lr: Tensor) -> Tensor:
        return self.weight * lr.repeat_interleave(2, -2).repeat_interleave(2, -1)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Any:
        pred = self(batch["low"] if "low" in batch else batch["lr"])
        return {"pred": pred} if self.return_pred else None


def _double_prediction(module: LightningModule, batch: dict[str, Tensor]) -> Tensor:
    return 2 * module(batch["lr"])


class _WritingMonitor(ConstraintMonitor):
    """Writes the logged values to a file, since ddp_spawn workers do not send state back."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(self.history[-1]))


def _expected(scale: float) -> tuple[float, float]:
    lr = _PairDataset().lr.double()
    diff = (scale - 1) * lr.abs()
    return diff.mean().item(), diff.max().item()


def _loader() -> DataLoader:
    return DataLoader(_PairDataset(), batch_size=2)


def test_logs_violation_of_forward(trainer_kwargs: dict[str, Any]) -> None:
    monitor = ConstraintMonitor()
    trainer = Trainer(callbacks=[monitor], devices=1, **trainer_kwargs)
    trainer.validate(_ScaledNearest(), _loader(), verbose=False)
    mean, mx = _expected(1.5)
    assert trainer.callback_metrics["val_constraint_violation_mean"].item() == pytest.approx(mean)
    assert trainer.callback_metrics["val_constraint_violation_max"].item() == pytest.approx(mx)
    assert monitor.history == [
        {"epoch": 0.0, "mean": pytest.approx(mean), "max": pytest.approx(mx)}
    ]


def test_predict_fn_and_output_key(trainer_kwargs: dict[str, Any]) -> None:
    monitor = ConstraintMonitor(predict_fn=_double_prediction, prefix="viol")
    Trainer(callbacks=[monitor], devices=1, **trainer_kwargs).validate(
        _ScaledNearest(), _loader(), verbose=False
    )
    assert monitor.history[-1]["max"] == pytest.approx(_expected(3.0)[1])
    reuse = ConstraintMonitor(output_key="pred")
    Trainer(callbacks=[reuse], devices=1, **trainer_kwargs).validate(
        _ScaledNearest(return_pred=True), _loader(), verbose=False
    )
    assert reuse.history[-1]["mean"] == pytest.approx(_expected(1.5)[0])


def test_hr_key_calls_forward_with_factor(trainer_kwargs: dict[str, Any]) -> None:
    monitor = ConstraintMonitor(hr_key="hr")
    Trainer(callbacks=[monitor], devices=1, **trainer_kwargs).validate(
        _FactorModel(), _loader(), verbose=False
    )
    assert monitor.history[-1]["mean"] == pytest.approx(1.0)
    assert monitor.history[-1]["max"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="set hr_key"):
        Trainer(callbacks=[ConstraintMonitor(hr_key="target")], **trainer_kwargs).validate(
            _FactorModel(), _loader(), verbose=False
        )


def test_state_dict_round_trip_through_checkpoint(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    monitor = ConstraintMonitor()
    trainer = Trainer(callbacks=[monitor], devices=1, **trainer_kwargs)
    trainer.validate(_ScaledNearest(), _loader(), verbose=False)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    restored = ConstraintMonitor()
    restored.load_state_dict(ckpt["callbacks"][monitor.state_key])
    assert restored.history == monitor.history and len(restored.history) == 1


def test_errors(trainer_kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at most one of hr_key, predict_fn and output_key"):
        ConstraintMonitor(predict_fn=_double_prediction, output_key="pred")
    with pytest.raises(TypeError, match="must be callable"):
        ConstraintMonitor(predict_fn=3)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="Set lr_key"):
        Trainer(callbacks=[ConstraintMonitor(lr_key="low")], **trainer_kwargs).validate(
            _ScaledNearest(), _loader(), verbose=False
        )
    with pytest.raises(KeyError, match="Return the prediction from validation_step"):
        Trainer(callbacks=[ConstraintMonitor(output_key="pred")], **trainer_kwargs).validate(
            _ScaledNearest(), _loader(), verbose=False
        )


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform == "win32", reason="ddp_spawn with gloo")
def test_ddp_equals_single_process(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    trainer = Trainer(
        callbacks=[_WritingMonitor(str(out))], devices=2, strategy="ddp_spawn", **trainer_kwargs
    )
    trainer.validate(_ScaledNearest(), _loader(), verbose=False)
    logged = json.loads(out.read_text())
    mean, mx = _expected(1.5)
    assert logged["mean"] == pytest.approx(mean, rel=1e-6)
    assert logged["max"] == pytest.approx(mx, rel=1e-6)
