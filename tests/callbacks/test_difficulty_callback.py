"""DifficultyScores: values, file format, crash safety, resume and the 2-process DDP equality."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.analysis.scores import (
    VoGAccumulator,
    forgetting_statistics,
    grand,
    output_scores,
)
from lightning_climate.callbacks import DifficultyScores, FunctionalDimension


class DigitsSubset(Dataset[dict[str, Tensor]]):
    """The first ``n`` sklearn digits as ``{"image": (1, 8, 8), "label", "index"}``."""

    def __init__(self, n: int) -> None:
        digits = load_digits()
        self.images = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
        self.labels = torch.tensor(digits.target[:n], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


class TinyDigits(LightningDataModule):
    def __init__(self, n: int = 101, batch_size: int = 16) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        return DataLoader(DigitsSubset(self.n), batch_size=self.batch_size, shuffle=True)


class TinyClassifier(LightningModule):
    def __init__(self, lr: float = 0.5, hidden: int = 16, crash_at_epoch: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.current_epoch == self.hparams["crash_at_epoch"]:
            raise RuntimeError("simulated crash")
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def logits_from_net(module: nn.Module, x: Tensor) -> Tensor:
    """A user-supplied forward (module level, so it pickles)."""
    return module.net(x)


ALL_SCORES = [
    "loss",
    "accuracy",
    "confidence",
    "max_confidence",
    "entropy",
    "margin",
    "el2n",
    "grand",
    "vog",
    "prediction_depth",
    "forgetting",
    "first_learned",
    "first_unforgettable",
    "unforgettable",
]


def read(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def fit(
    trainer_kwargs: dict[str, Any], callback: DifficultyScores, epochs: int = 2, **model_kw: Any
) -> TinyClassifier:
    torch.manual_seed(0)
    model = TinyClassifier(**model_kw)
    trainer = Trainer(max_epochs=epochs, callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, TinyDigits())
    return model


def test_scores_of_final_model_match_direct_computation(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "scores.nc"
    callback = DifficultyScores(
        scores=ALL_SCORES, layers=["net.1", "net.3"], knn_k=5, path=str(path)
    )
    model = fit(trainer_kwargs, callback, epochs=3)
    ds = read(path)
    assert ds["loss"].dims == ("epoch", "index")
    assert ds["epoch"].values.tolist() == [0, 1, 2]
    assert ds["global_step"].values.tolist() == [7, 14, 21]
    assert ds["index"].values.tolist() == list(range(101))
    assert set(ALL_SCORES) <= set(ds.data_vars)
    assert ds.attrs["model_class"] == "TinyClassifier"
    assert json.loads(ds.attrs["callback_config"])["layers"] == ["net.1", "net.3"]
    assert json.loads(ds.attrs["hparams"])["hidden"] == 16

    data = DigitsSubset(101)
    model.eval()
    with torch.no_grad():
        expected = output_scores(model(data.images), data.labels)
    for name, value in expected.items():
        np.testing.assert_allclose(ds[name].values[-1], value.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ds["grand"].values[-1], grand(model, data.images, data.labels).numpy(), rtol=1e-4
    )
    trace = torch.tensor(ds["accuracy"].values)
    stats = forgetting_statistics(trace)
    for name in ("forgetting", "first_learned", "first_unforgettable", "unforgettable"):
        np.testing.assert_array_equal(ds[name].values[-1], stats[name].numpy())
    assert np.all((ds["prediction_depth"].values >= 0) & (ds["prediction_depth"].values <= 2))
    assert np.all(ds["vog"].values[0] == 0.0)  # one checkpoint: no variance yet
    assert np.all(ds["vog"].values[-1] > 0.0)
    assert model.training is False  # we set eval above; the callback must restore train mode itself


def test_cached_batches_give_the_same_scores(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    fit(trainer_kwargs, DifficultyScores(path=str(tmp_path / "a.nc")), epochs=2)
    cached = DifficultyScores(path=str(tmp_path / "b.nc"), cache_batches=True)
    fit(trainer_kwargs, cached, epochs=2)
    assert cached._cache is not None and sum(len(b["index"]) for b in cached._cache) == 101
    a, b = read(tmp_path / "a.nc"), read(tmp_path / "b.nc")
    for name in ("loss", "accuracy", "margin", "el2n"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


class ModeSpy(DifficultyScores):
    """Asserts the model is back in train mode after every scoring pass."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        assert pl_module.training


def test_train_mode_restored_and_custom_forward(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.nc"
    fit(
        trainer_kwargs,
        ModeSpy(forward=logits_from_net, path=str(path), scores=["loss", "grand"]),
        epochs=1,
    )
    assert np.isfinite(read(path)["grand"].values).all()


def test_schedule_epochs_steps_and_per_score(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.nc"
    callback = DifficultyScores(
        scores=["loss", "grand"],
        epochs=[-1, 1, 2],
        steps=[3, 21],  # 21 ends epoch 2, scored at its end anyway: no second record
        score_epochs={"grand": [2]},
        path=str(path),
    )
    fit(trainer_kwargs, callback, epochs=3)
    ds = read(path)
    assert ds["epoch"].values.tolist() == [-1, 0, 1, 2]
    assert ds["global_step"].values.tolist() == [0, 3, 14, 21]
    grand_done = np.isfinite(ds["grand"].values).all(1).tolist()
    assert grand_done == [False, False, False, True]
    assert np.isfinite(ds["loss"].values).all()
    assert ds["loss"].values[0].mean() == pytest.approx(
        math.log(10), abs=0.15
    )  # untrained: near uniform


def test_summary_goes_to_logger(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    trainer_kwargs = {**trainer_kwargs, "logger": CSVLogger(tmp_path, name="log")}
    callback = DifficultyScores(scores=["loss", "el2n"], path=str(tmp_path / "s.nc"))
    fit(trainer_kwargs, callback, epochs=2)
    ds = read(tmp_path / "s.nc")
    assert callback.last_summary["difficulty/el2n_mean"] == pytest.approx(
        float(ds["el2n"].values[-1].mean())
    )
    metrics = (tmp_path / "log" / "version_0" / "metrics.csv").read_text()
    assert "difficulty/loss_mean" in metrics


class TupleBatches(LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        data = DigitsSubset(20)
        return DataLoader(list(zip(data.images, data.labels, strict=True)), batch_size=10)


def test_missing_index_key_names_the_requirement(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    callback = DifficultyScores(index_key="idx", path=str(tmp_path / "s.nc"))
    with pytest.raises(KeyError, match=r"unique integer id of each example.*\['idx'\]"):
        fit(trainer_kwargs, callback, epochs=1)
    trainer = Trainer(
        max_epochs=1, callbacks=[DifficultyScores(path=str(tmp_path / "t.nc"))], **trainer_kwargs
    )

    class TupleModel(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

    with pytest.raises(TypeError, match="batches that are mappings"):
        trainer.fit(TupleModel(), TupleBatches())


class OffsetIds(DigitsSubset):
    """Ids that are not positions (e.g. positions in a parent data set), or duplicated ones."""

    def __init__(self, n: int, duplicate: bool = False) -> None:
        super().__init__(n)
        self.duplicate = duplicate

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        sample = super().__getitem__(i)
        sample["index"] = torch.tensor(0 if self.duplicate and i < 2 else 1000 + 2 * i)
        return sample


class OffsetDigits(TinyDigits):
    def __init__(self, duplicate: bool = False) -> None:
        super().__init__(n=30, batch_size=8)
        self.duplicate = duplicate

    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        return DataLoader(
            OffsetIds(self.n, self.duplicate), batch_size=self.batch_size, shuffle=True
        )


def test_index_values_are_ids_not_positions(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "s.nc"
    trainer = Trainer(max_epochs=1, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    model = TinyClassifier()
    trainer.fit(model, OffsetDigits())
    ds = read(path)
    assert ds["index"].values.tolist() == [1000 + 2 * i for i in range(30)]
    data = DigitsSubset(30)
    model.eval()
    with torch.no_grad():
        expected = output_scores(model(data.images), data.labels)["loss"]
    np.testing.assert_allclose(ds["loss"].values[0], expected.numpy(), rtol=1e-5)
    trainer = Trainer(max_epochs=1, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    with pytest.raises(ValueError, match="30 examples carried 29 distinct values"):
        trainer.fit(TinyClassifier(), OffsetDigits(duplicate=True))


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="Unknown difficulty scores"):
        DifficultyScores(scores=["los"])
    with pytest.raises(ValueError, match="prediction_depth needs `layers`"):
        DifficultyScores(scores=["prediction_depth"])
    with pytest.raises(ValueError, match="score_epochs names scores"):
        DifficultyScores(scores=["loss"], score_epochs={"grand": [1]})
    with pytest.raises(ValueError, match="epochs must be >= -1"):
        DifficultyScores(epochs=[-2])
    with pytest.raises(TypeError, match=r"run_attrs\['pretrained'\] = True: .*str, int or float"):
        DifficultyScores(run_attrs={"arch": "cnn", "pretrained": True})
    with pytest.raises(TypeError, match=r"run_attrs\['note'\] = None"):
        DifficultyScores(run_attrs={"note": None})


def test_unknown_layer_is_refused(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    callback = DifficultyScores(
        scores=["prediction_depth"], layers=["net.9"], path=str(tmp_path / "s.nc")
    )
    with pytest.raises(ValueError, match=r"layers \['net.9'\] are not submodules"):
        fit(trainer_kwargs, callback, epochs=1)


def test_state_dict_round_trip() -> None:
    callback = DifficultyScores(scores=["accuracy", "forgetting", "vog"])
    callback.scored = [(0, 7), (1, 14)]
    callback.index_values = torch.tensor([3, 5])
    callback.accuracy_trace = [
        torch.tensor([0, 1], dtype=torch.uint8),
        torch.tensor([1, 1], dtype=torch.uint8),
    ]
    callback.vog = VoGAccumulator(2)
    callback.vog.update(torch.tensor([0, 1]), torch.ones(2, 3))
    callback.vog.update(torch.tensor([0, 1]), torch.zeros(2, 3))
    other = DifficultyScores(scores=["accuracy", "forgetting", "vog"])
    other.load_state_dict(callback.state_dict())
    assert other.scored == [(0, 7), (1, 14)]
    assert other.index_values is not None and other.index_values.tolist() == [3, 5]
    assert [a.tolist() for a in other.accuracy_trace] == [[0, 1], [1, 1]]
    torch.testing.assert_close(other.vog.compute(), torch.full((2,), 0.25, dtype=torch.float64))


def test_crash_keeps_written_epochs_and_resume_continues(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.nc"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    scores = ["loss", "accuracy", "forgetting", "vog"]
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=4,
        callbacks=[DifficultyScores(scores=scores, path=str(path)), ckpt],
        **trainer_kwargs,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyClassifier(crash_at_epoch=2), TinyDigits())
    crashed = read(path)
    assert crashed["epoch"].values.tolist() == [0, 1]

    resumed_cb = DifficultyScores(scores=scores, path=str(path))
    trainer = Trainer(
        max_epochs=4,
        callbacks=[resumed_cb, ModelCheckpoint(dirpath=tmp_path / "ckpt")],
        **trainer_kwargs,
    )
    trainer.fit(TinyClassifier(), TinyDigits(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    final = read(path)
    assert final["epoch"].values.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(final["loss"].values[:2], crashed["loss"].values)
    # forgetting uses the restored accuracy trace of epochs 0-1, not a fresh one
    stats = forgetting_statistics(torch.tensor(final["accuracy"].values))
    np.testing.assert_array_equal(final["forgetting"].values[-1], stats["forgetting"].numpy())
    assert len(resumed_cb.accuracy_trace) == 4
    assert int(resumed_cb.vog.count.max()) == 4


def test_resume_drops_records_written_after_the_checkpoint(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.nc"
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="e{epoch}", save_top_k=-1, every_n_epochs=1
    )
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=3, callbacks=[DifficultyScores(path=str(path)), ckpt], **trainer_kwargs
    )
    trainer.fit(TinyClassifier(), TinyDigits())
    assert read(path)["epoch"].values.tolist() == [0, 1, 2]
    # resume from the checkpoint of epoch 0: the file's records of epochs 1-2 belong to the abandoned branch
    trainer = Trainer(max_epochs=2, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    trainer.fit(TinyClassifier(), TinyDigits(), ckpt_path=str(tmp_path / "ckpt" / "eepoch=0.ckpt"))
    ds = read(path)
    assert ds["epoch"].values.tolist() == [0, 1]
    assert ds["global_step"].values.tolist() == [7, 14]


class RecordingFunctionalDimension(FunctionalDimension):
    """Writes its measurements to ``<root>/fdim_<devices>.json`` from rank 0 (ddp_spawn loses state)."""

    def __init__(self, out: str) -> None:
        super().__init__(num_points=100)
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(self.history))


def run_for_ddp(root: str, devices: int) -> None:
    """Score an unchanging model (lr=0) so 1- and 2-process runs see the same model state."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)
    callback = DifficultyScores(
        scores=ALL_SCORES,
        epochs=[-1, 0, 1],
        layers=["net.1", "net.3"],
        knn_k=5,
        path=f"{root}/scores_{devices}.nc",
    )
    kwargs: dict[str, Any] = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        callbacks=[callback, RecordingFunctionalDimension(f"{root}/fdim_{devices}.json")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )
    trainer.fit(model, TinyDigits(n=101, batch_size=16))


@pytest.mark.ddp
def test_two_processes_give_the_single_process_results(tmp_path: Path) -> None:
    """DifficultyScores and FunctionalDimension share one 2-process run (spawning is the slow part)."""
    run_for_ddp(str(tmp_path), 1)
    run_for_ddp(str(tmp_path), 2)
    single, double = read(tmp_path / "scores_1.nc"), read(tmp_path / "scores_2.nc")
    assert double.attrs["world_size"] == 2
    assert double["index"].values.tolist() == list(
        range(101)
    )  # 101 examples: one padding duplicate
    assert single["epoch"].values.tolist() == double["epoch"].values.tolist() == [-1, 0, 1]
    for name in ALL_SCORES:
        np.testing.assert_allclose(
            double[name].values, single[name].values, rtol=1e-6, atol=1e-7, err_msg=name
        )
    for name in ("accuracy", "prediction_depth", "forgetting", "first_learned"):
        np.testing.assert_array_equal(double[name].values, single[name].values, err_msg=name)
    fdim_single = json.loads((tmp_path / "fdim_1.json").read_text())
    fdim_double = json.loads((tmp_path / "fdim_2.json").read_text())
    assert len(fdim_single) == 2 and fdim_double == fdim_single


def test_unwritable_path_is_an_error_naming_the_file(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "taken.nc"
    path.mkdir()  # a directory where the file should go
    trainer = Trainer(max_epochs=2, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    with pytest.raises(OSError, match=r"could not write its scores to .*taken\.nc.*writable file"):
        trainer.fit(TinyClassifier(), TinyDigits())
    assert path.is_dir() and not any(path.iterdir())


def test_missing_netcdf4_fails_at_setup(
    trainer_kwargs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "netCDF4", None)  # as if not installed
    trainer = Trainer(
        max_epochs=1, callbacks=[DifficultyScores(path=str(tmp_path / "s.nc"))], **trainer_kwargs
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install netCDF4"):
        trainer.fit(TinyClassifier(), TinyDigits())
    assert not (tmp_path / "s.nc").exists()
