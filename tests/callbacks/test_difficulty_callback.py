"""DifficultyScores: values, file format, crash safety, resume and the 2-process DDP equality."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difficulty_helpers import (
    ALL_SCORES,
    DigitsSubset,
    TinyClassifier,
    TinyDigits,
    fit,
    logits_from_net,
    read,
)
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_climate.analysis.scores import (
    VoGAccumulator,
    forgetting_statistics,
    grand,
    output_scores,
)
from lightning_climate.callbacks import DifficultyScores, FunctionalDimension


def test_scores_of_final_model_match_direct_computation(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "scores.zarr"
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
    fit(trainer_kwargs, DifficultyScores(path=str(tmp_path / "a.zarr")), epochs=2)
    cached = DifficultyScores(path=str(tmp_path / "b.zarr"), cache_batches=True)
    fit(trainer_kwargs, cached, epochs=2)
    assert cached._cache is not None and sum(len(b["index"]) for b in cached._cache) == 101
    a, b = read(tmp_path / "a.zarr"), read(tmp_path / "b.zarr")
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
    path = tmp_path / "s.zarr"
    fit(
        trainer_kwargs,
        ModeSpy(forward=logits_from_net, path=str(path), scores=["loss", "grand"]),
        epochs=1,
    )
    assert np.isfinite(read(path)["grand"].values).all()


def test_schedule_epochs_steps_and_per_score(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.zarr"
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
    callback = DifficultyScores(scores=["loss", "el2n"], path=str(tmp_path / "s.zarr"))
    fit(trainer_kwargs, callback, epochs=2)
    ds = read(tmp_path / "s.zarr")
    assert callback.last_summary["difficulty/el2n_mean"] == pytest.approx(
        float(ds["el2n"].values[-1].mean())
    )
    metrics = (tmp_path / "log" / "version_0" / "metrics.csv").read_text()
    assert "difficulty/loss_mean" in metrics


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
    path = tmp_path / "s.zarr"
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
    other = str(tmp_path / "t.zarr")
    trainer = Trainer(max_epochs=1, callbacks=[DifficultyScores(path=other)], **trainer_kwargs)
    with pytest.raises(ValueError, match="30 examples carried 29 distinct values"):
        trainer.fit(TinyClassifier(), OffsetDigits(duplicate=True))


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="Unknown difficulty scores"):
        DifficultyScores(scores=["los"])
    with pytest.raises(ValueError, match="prediction_depth needs `layers`"):
        DifficultyScores(scores=["prediction_depth"])
    with pytest.raises(ValueError, match="score_epochs names scores"):
        DifficultyScores(scores=["loss"], score_epochs={"grand": [1]})
    with pytest.raises(ValueError, match=r"epochs must hold ints >= -1 \(-1 = before training\)"):
        DifficultyScores(epochs=[-2])
    with pytest.raises(
        ValueError, match=r"split must be one of \['train', 'val', 'test'\], got 'bogus'"
    ):
        DifficultyScores(split="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps must hold ints >= 1"):
        DifficultyScores(steps=[0])
    with pytest.raises(ValueError, match=r"score_epochs\['grand'\] must hold ints >= -1"):
        DifficultyScores(scores=["grand"], score_epochs={"grand": [-3]})
    with pytest.raises(ValueError, match="every_n_epochs must be >= 0"):
        DifficultyScores(every_n_epochs=-1)
    with pytest.raises(ValueError, match="knn_k must be an int >= 1, got 0"):
        DifficultyScores(knn_k=0)
    with pytest.raises(ValueError, match="grand_chunk_size must be an int >= 1, got 0"):
        DifficultyScores(grand_chunk_size=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -4"):
        DifficultyScores(batch_size=-4)
    with pytest.raises(TypeError, match=r"index_key must be a str .* or an int .*, got 1.5"):
        DifficultyScores(index_key=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"path='s\.nc': .*name it '\*\.zarr'"):
        DifficultyScores(path="s.nc")
    with pytest.raises(ValueError, match=r"pass a list of names"):
        DifficultyScores(scores="loss")
    with pytest.raises(TypeError, match="forward must be a callable"):
        DifficultyScores(forward="net")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"run_attrs\['pretrained'\] = True: .*str, int or float"):
        DifficultyScores(run_attrs={"arch": "cnn", "pretrained": True})
    with pytest.raises(TypeError, match=r"run_attrs\['note'\] = None"):
        DifficultyScores(run_attrs={"note": None})


def test_grand_of_the_last_layer_is_el2n_times_feature_norm(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """For the last Linear layer, |grad| = ||p - onehot(y)|| * sqrt(||h||^2 + 1) (h its input)."""
    path = tmp_path / "s.zarr"
    callback = DifficultyScores(
        scores=["el2n", "grand"], grand_parameters=["net.3"], grand_chunk_size=7, path=str(path)
    )
    model = fit(trainer_kwargs, callback, epochs=1)
    ds = read(path)
    data = DigitsSubset(101)
    with torch.no_grad():
        hidden = model.net[:3](data.images).double()
    expected = ds["el2n"].values[0] * np.sqrt((hidden**2).sum(1).numpy() + 1)
    np.testing.assert_allclose(ds["grand"].values[0], expected, rtol=1e-5)
    assert json.loads(ds.attrs["callback_config"])["grand_parameters"] == ["net.3"]
    with pytest.raises(ValueError, match=r"grand_parameters: 'head' names no parameter"):
        fit(
            trainer_kwargs,
            DifficultyScores(grand_parameters=["head"], path=str(tmp_path / "t.zarr")),
        )


def test_unknown_layer_is_refused(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    callback = DifficultyScores(
        scores=["prediction_depth"], layers=["net.9"], path=str(tmp_path / "s.zarr")
    )
    with pytest.raises(ValueError, match=r"layers \['net.9'\] are not submodules"):
        fit(trainer_kwargs, callback, epochs=1)


def test_state_dict_round_trip() -> None:
    callback = DifficultyScores(scores=["accuracy", "forgetting", "vog"])
    callback.run_id = "abc"
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
    assert other.run_id == "abc"
    assert other.index_values is not None and other.index_values.tolist() == [3, 5]
    assert [a.tolist() for a in other.accuracy_trace] == [[0, 1], [1, 1]]
    torch.testing.assert_close(other.vog.compute(), torch.full((2,), 0.25, dtype=torch.float64))


class RecordingFunctionalDimension(FunctionalDimension):
    """Writes its measurements to ``<root>/fdim_<devices>.json`` from rank 0 (ddp_spawn loses state)."""

    def __init__(self, out: str) -> None:
        super().__init__(num_points=100)
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(self.history))


class RankHoldings(DifficultyScores):
    """Writes, per rank, how many examples' scores the rank holds at the end of training."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        held = {"vog": self.vog.num_examples, "trace": sum(len(a) for a in self.accuracy_trace)}
        Path(f"{self.path}.rank{trainer.global_rank}.json").write_text(json.dumps(held))


def run_for_ddp(root: str, devices: int) -> None:
    """Score an unchanging model (lr=0) so 1- and 2-process runs see the same model state."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)
    callback = RankHoldings(
        scores=ALL_SCORES,
        epochs=[-1, 0, 1],
        layers=["net.1", "net.3"],
        knn_k=5,
        path=f"{root}/scores_{devices}.zarr",
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
    single, double = read(tmp_path / "scores_1.zarr"), read(tmp_path / "scores_2.zarr")
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
    # only rank 0 gathers and keeps every example's scores; rank 1 sends its shard and keeps none
    rank0 = json.loads((tmp_path / "scores_2.zarr.rank0.json").read_text())
    rank1 = json.loads((tmp_path / "scores_2.zarr.rank1.json").read_text())
    assert rank0 == {"vog": 101, "trace": 3 * 101} and rank1 == {"vog": 0, "trace": 0}
    fdim_single = json.loads((tmp_path / "fdim_1.json").read_text())
    fdim_double = json.loads((tmp_path / "fdim_2.json").read_text())
    assert len(fdim_single) == 2 and fdim_double == fdim_single
