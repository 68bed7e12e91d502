"""FunctionalDimension callback: logged values, refusals and state round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.analysis.functional_dimension import functional_dimension
from lightning_climate.callbacks import FunctionalDimension


class RandomImages(Dataset[dict[str, Tensor]]):
    """Gaussian 8x8 "images" with random labels: the functional dimension ignores the data."""

    def __init__(self, n: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=gen)
        self.y = torch.randint(0, 10, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


class TinyDigits(LightningDataModule):
    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        return DataLoader(RandomImages(), batch_size=16)


class TinyClassifier(LightningModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_logged_values_match_the_analysis(trainer_kwargs: dict[str, Any]) -> None:
    callback = FunctionalDimension(num_points=150, every_n_epochs=1)
    torch.manual_seed(0)
    model = TinyClassifier(hidden=8)
    trainer = Trainer(max_epochs=2, callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, TinyDigits())
    assert callback.input_shape == (1, 8, 8)
    assert [h["epoch"] for h in callback.history] == [0.0, 1.0]
    points = torch.randn(
        150, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    expected = functional_dimension(model.net, points)
    assert trainer.callback_metrics["fdim/rank"].item() == expected.rank
    assert trainer.callback_metrics["fdim/bound"].item() == 64 * 8 + 8 + 8 * 10 + 10 - 8
    assert trainer.callback_metrics["fdim/dead"].item() == expected.dead
    assert callback.history[-1]["fdim/gap"] == expected.bound - expected.rank
    assert expected.rank <= expected.bound


class WithBatchNorm(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
        )


def test_refuses_unsupported_architecture(trainer_kwargs: dict[str, Any]) -> None:
    trainer = Trainer(max_epochs=1, callbacks=[FunctionalDimension()], **trainer_kwargs)
    with pytest.raises(TypeError, match=r"Layer '2' \(BatchNorm1d\) is not supported"):
        trainer.fit(WithBatchNorm(), TinyDigits())


class TwoNets(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        self.b = nn.Sequential(nn.Linear(2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) + self.b(x)


def test_submodule_selection_and_errors() -> None:
    module = TwoNets()
    with pytest.raises(ValueError, match=r"has 2 nn\.Sequential children; set `submodule`"):
        FunctionalDimension().network(module)
    with pytest.raises(ValueError, match="submodule 'c' is not in TwoNets"):
        FunctionalDimension(submodule="c").network(module)
    callback = FunctionalDimension(submodule="a", num_points=500, input_shape=[2])
    values = callback.measure(module)
    assert values["fdim/bound"] == 10.0 and values["fdim/rank"] <= 10.0
    with pytest.warns(
        UserWarning, match="5 points give only 5 Jacobian rows, fewer than the bound 10"
    ):
        FunctionalDimension(submodule="a", num_points=5, input_shape=[2]).measure(module)
    with pytest.raises(ValueError, match="num_points must be a positive integer"):
        FunctionalDimension(num_points=0)
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        FunctionalDimension(every_n_epochs=0)


def test_default_num_points_gives_ten_rows_per_parameter() -> None:
    callback = FunctionalDimension(submodule="a", input_shape=[2])
    # 13 parameters, 1 output -> 130 points
    assert callback.points(TwoNets().a).shape == (130, 2)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    callback = FunctionalDimension()
    callback.input_shape = (1, 8, 8)
    callback.history = [{"epoch": 0.0, "fdim/rank": 7.0}]
    other = FunctionalDimension()
    other.load_state_dict(callback.state_dict())
    assert other.history == callback.history and other.input_shape == (1, 8, 8)
    torch.save(callback.state_dict(), tmp_path / "s.pt")
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert other.history == callback.history
