"""DifficultyScores(source="training"): scores read from the training forward passes.

The reference of every value is the module's own logits, recorded inside its training_step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difficulty_helpers import DigitsSubset, TinyClassifier, TinyDigits, read
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    Sampler,
    TensorDataset,
)

from lightning_climate.analysis.scores import forgetting_statistics, output_scores
from lightning_climate.callbacks import DifficultyScores, IndexedDataset

SCORES = ["loss", "accuracy", "confidence", "margin", "el2n", "forgetting", "first_learned"]


class RecordingClassifier(TinyClassifier):
    """Keeps ``(ids, logits, labels)`` of every training step; crashes at a chosen step."""

    def __init__(self, crash_at: tuple[int, int] = (-1, -1), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self.crash_at = crash_at

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if (self.current_epoch, batch_idx) == self.crash_at:
            raise RuntimeError("simulated crash")
        x, y = self._xy(batch)
        logits = self(x)
        entry = (batch["index"], logits.detach().clone(), y)
        self.steps.setdefault(self.current_epoch, []).append(entry)
        return nn.functional.cross_entropy(logits, y)


def expected_scores(steps: list[tuple[Tensor, Tensor, Tensor]], n: int) -> dict[str, np.ndarray]:
    """Each example's scores from the logits its training step computed, ordered by id."""
    out = {
        name: np.full(n, np.nan) for name in ("loss", "accuracy", "confidence", "margin", "el2n")
    }
    for index, logits, y in steps:
        for name, value in output_scores(logits, y).items():
            if name in out:
                out[name][index.numpy()] = value.numpy()
    return out


def train(
    trainer_kwargs: dict[str, Any],
    callbacks: list[Any],
    epochs: int = 3,
    model: LightningModule | None = None,
    data: Any = None,
    **fit_kw: Any,
) -> Any:
    torch.manual_seed(0)
    model = model or RecordingClassifier()
    trainer = Trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, data or TinyDigits(), **fit_kw)
    return model


def test_scores_are_those_of_the_training_forward(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "t.zarr"
    callback = DifficultyScores(scores=SCORES, source="training", path=str(path))
    model = train(trainer_kwargs, [callback])
    ds = read(path)
    assert ds["epoch"].values.tolist() == [0, 1, 2]
    assert ds["global_step"].values.tolist() == [7, 14, 21]
    assert ds["index"].values.tolist() == list(range(101))
    assert ds.attrs["conventions"].startswith("training mode")
    for epoch in range(3):
        expected = expected_scores(model.steps[epoch], 101)
        for name, value in expected.items():
            np.testing.assert_array_equal(ds[name].values[epoch], value, err_msg=name)
    # the training weights change within an epoch: these are not the end-of-epoch model's scores
    model.eval()
    with torch.no_grad():
        final = output_scores(model(DigitsSubset(101).images), DigitsSubset(101).labels)
    assert not np.allclose(ds["loss"].values[-1], final["loss"].numpy(), rtol=1e-3)
    trace = torch.tensor(ds["accuracy"].values, dtype=torch.uint8)
    stats = forgetting_statistics(trace)
    for name in ("forgetting", "first_learned"):
        np.testing.assert_array_equal(ds[name].values[-1], stats[name].double().numpy())


class SubmoduleOnly(RecordingClassifier):
    """training_step calls ``self.net`` directly; ``self(x)`` returns probabilities."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self._xy(batch)
        logits = self.net(x)
        self.steps.setdefault(self.current_epoch, []).append(
            (batch["index"], logits.detach().clone(), y)
        )
        return nn.functional.cross_entropy(logits, y)


def test_logits_module_names_the_submodule_that_gives_the_logits(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "t.zarr"
    callback = DifficultyScores(source="training", logits_module="net", path=str(path))
    model = train(trainer_kwargs, [callback], epochs=2, model=SubmoduleOnly())
    expected = expected_scores(model.steps[1], 101)
    np.testing.assert_array_equal(read(path)["margin"].values[1], expected["margin"])

    hooked_module = DifficultyScores(source="training", path=str(tmp_path / "u.zarr"))
    with pytest.raises(
        RuntimeError, match=r"LightningModule was not called during training step 0"
    ):
        train(trainer_kwargs, [hooked_module], epochs=1, model=SubmoduleOnly())
    with pytest.raises(ValueError, match=r"logits_module='nett' is not a submodule"):
        train(
            trainer_kwargs,
            [
                DifficultyScores(
                    source="training", logits_module="nett", path=str(tmp_path / "v.zarr")
                )
            ],
        )


class TupleOut(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


class TupleHead(RecordingClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TupleOut()

    def forward(self, x: Tensor) -> Tensor:
        return self.pair(self.net(x))[0]


@pytest.mark.parametrize(
    ("model", "logits_module", "message"),
    [
        (
            RecordingClassifier(hidden=4),
            "net.1",
            r"range over \[0, 9\] but the model has 4 classes",
        ),
        (
            TupleHead(),
            "pair",
            r"logits from the first output of 'pair' in a training step, got tuple",
        ),
    ],
)
def test_wrong_outputs_stop_at_the_first_step(
    model: LightningModule,
    logits_module: str,
    message: str,
    trainer_kwargs: dict[str, Any],
    tmp_path: Path,
) -> None:
    callback = DifficultyScores(
        source="training", logits_module=logits_module, path=str(tmp_path / "t.zarr")
    )
    with pytest.raises(ValueError, match=message):
        train(trainer_kwargs, [callback], epochs=1, model=model)
    assert len(model.steps[0]) == 1  # one training step ran


def test_combinations_that_cannot_work_are_refused() -> None:
    cases = {
        r"\['grand', 'vog'\] need passes of their own": {"scores": ["loss", "grand", "vog"]},
        "`steps` would score the examples of one step only": {"steps": [3]},
        "epoch -1 has no training forward": {"epochs": [-1, 2]},
        "only the train split is trained on, not split='val'": {"split": "val"},
        r"IndexedDataset\(TensorDataset\(x, y\)\) yields \(x, y, id\), and pass index_key=2": {
            "index_key": None
        },
        "`forward` is not called": {"forward": lambda m, x: m(x)},
        r"\['batch_size', 'cache_batches'\] configure the eval pass": {
            "batch_size": 8,
            "cache_batches": True,
        },
    }
    for message, kwargs in cases.items():
        with pytest.raises(ValueError, match=r"source='training'\) reads .*" + message):
            DifficultyScores(source="training", **kwargs)
    with pytest.raises(ValueError, match="source must be one of"):
        DifficultyScores(source="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logits_module applies to source='training'"):
        DifficultyScores(logits_module="net")


class NoTraining(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        raise AssertionError("training must not start")


@pytest.mark.parametrize(
    ("loader_kw", "trainer_kw", "message"),
    [
        ({"drop_last": True}, {}, r"drop_last=True and skips 5 examples each epoch"),
        ({}, {"limit_train_batches": 3}, r"limit_train_batches=3 trains on 3 of the 7 batches"),
    ],
)
def test_loaders_that_skip_examples_are_refused_before_training(
    loader_kw: dict[str, Any],
    trainer_kw: dict[str, Any],
    message: str,
    trainer_kwargs: dict[str, Any],
    tmp_path: Path,
) -> None:
    loader = DataLoader(DigitsSubset(101), batch_size=16, shuffle=True, **loader_kw)
    callback = DifficultyScores(source="training", path=str(tmp_path / "t.zarr"))
    trainer = Trainer(max_epochs=1, callbacks=[callback], **trainer_kwargs, **trainer_kw)
    with pytest.raises(ValueError, match=message):
        trainer.fit(NoTraining(), train_dataloaders=loader)


def test_crash_mid_epoch_writes_no_partial_record_and_resume_matches(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    reference_path = tmp_path / "reference.zarr"
    callback = DifficultyScores(scores=SCORES, source="training", path=str(reference_path))
    train(trainer_kwargs, [callback], epochs=4, data=TinyDigits(shuffle=False))
    reference = read(reference_path)

    path = tmp_path / "t.zarr"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    torch.manual_seed(0)  # the reference's initial weights
    crashing = RecordingClassifier(crash_at=(2, 4))  # after 4 of the 7 steps of epoch 2
    callback = DifficultyScores(scores=SCORES, source="training", path=str(path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(trainer_kwargs, [callback, ckpt], 4, crashing, TinyDigits(shuffle=False))
    assert len(crashing.steps[2]) == 4
    assert read(path)["epoch"].values.tolist() == [0, 1]

    resumed = DifficultyScores(scores=SCORES, source="training", path=str(path))
    train(
        trainer_kwargs,
        [resumed],
        4,
        data=TinyDigits(shuffle=False),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    ds = read(path)
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3]
    for name in SCORES:
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)


_KILLED_RUN = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from difficulty_helpers import TinyClassifier, TinyDigits
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_climate.callbacks import DifficultyScores

class Killed(TinyClassifier):
    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == (2, 3):  # 3 steps of epoch 2 were captured
            os._exit(9)
        return super().training_step(batch, batch_idx)

torch.manual_seed(0)
trainer = Trainer(max_epochs=4, callbacks=[
    DifficultyScores(scores={scores!r}, source="training", path={path!r}),
    ModelCheckpoint(dirpath={ckpt!r}, save_last=True)], accelerator="cpu", logger=False,
    enable_progress_bar=False, enable_model_summary=False, deterministic=True, default_root_dir={root!r})
trainer.fit(Killed(), TinyDigits(shuffle=False))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: about 20 s on a busy machine
def test_hard_kill_mid_epoch_then_resume(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    reference_path = tmp_path / "reference.zarr"
    callback = DifficultyScores(scores=SCORES, source="training", path=str(reference_path))
    train(trainer_kwargs, [callback], 4, data=TinyDigits(shuffle=False))  # seeded as the script
    path, ckpt = tmp_path / "t.zarr", tmp_path / "ckpt"
    script = _KILLED_RUN.format(
        tests=str(Path(__file__).parent), scores=SCORES, path=str(path), ckpt=str(ckpt),
        root=str(tmp_path),
    )  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert read(path)["epoch"].values.tolist() == [0, 1]  # nothing of epoch 2
    resumed = DifficultyScores(scores=SCORES, source="training", path=str(path))
    train(trainer_kwargs, [resumed], 4, TinyClassifier(), TinyDigits(shuffle=False),
          ckpt_path=str(ckpt / "last.ckpt"))  # fmt: skip
    ds, reference = read(path), read(reference_path)
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3]
    for name in SCORES:
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)


def test_resume_inside_an_epoch_skips_its_record_with_a_warning(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "t.zarr"
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1, filename="{step}"
    )
    callback = DifficultyScores(source="training", path=str(path))
    train(trainer_kwargs, [callback, ckpt], epochs=2)  # step 10 lies inside epoch 1 (steps 7-14)
    resumed = DifficultyScores(source="training", path=str(path))
    with pytest.warns(
        UserWarning, match=r"no record for epoch 1: its scores come from \d of its 7"
    ):
        train(trainer_kwargs, [resumed], 3, ckpt_path=str(tmp_path / "ckpt" / "step=10.ckpt"))
    ds = read(path)
    assert ds["epoch"].values.tolist() == [0, 2]
    assert ds["global_step"].values.tolist() == [7, 21]


def test_indexed_dataset_appends_positions() -> None:
    x, y = torch.randn(5, 3), torch.arange(5)
    pairs = IndexedDataset(TensorDataset(x, y))
    assert len(pairs) == 5
    xi, yi, i = pairs[3]
    assert torch.equal(xi, x[3]) and int(yi) == 3 and i.dtype == torch.long and int(i) == 3
    dicts = IndexedDataset(DigitsSubset(4), key="id")
    assert int(dicts[2]["id"]) == 2 and set(dicts[2]) == {"image", "label", "index", "id"}
    with pytest.raises(KeyError, match="already have a 'index' entry; pass another `key`"):
        IndexedDataset(DigitsSubset(4))[0]

    class Stream(IterableDataset[Tensor]):
        def __iter__(self) -> Iterator[Tensor]:
            yield torch.zeros(1)

    with pytest.raises(TypeError, match="needs a map-style dataset"):
        IndexedDataset(Stream())


# ------------------------------------------------------------------------ 2 processes


class RankOrder(Sampler[int]):
    """The examples 2 DDP ranks with batch ``b`` train on at each step, rank 0's then rank 1's.

    Under DDP, Lightning gives each rank a shuffling DistributedSampler (seed ``PL_GLOBAL_SEED``,
    reshuffled every epoch). A single process with batch ``2 b`` taking, at each step, rank 0's
    batch and then rank 1's trains on the same examples with the same mean gradient, so every
    example meets the same weights in both runs.
    """

    def __init__(self, n: int, b: int) -> None:
        self.n, self.b, self.epoch = n, b, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))  # what Lightning passes to the sampler
        ranks = []
        for rank in range(2):
            sampler = DistributedSampler(range(self.n), num_replicas=2, rank=rank, seed=seed)
            sampler.set_epoch(self.epoch)
            ranks.append(list(sampler))
        for start in range(0, len(ranks[0]), self.b):
            for order in ranks:
                yield from order[start : start + self.b]

    def __len__(self) -> int:
        return 2 * ((self.n + 1) // 2)


def run_for_ddp(root: str, devices: int) -> None:
    torch.manual_seed(0)
    callback = DifficultyScores(
        scores=SCORES,
        source="training",
        input_key=0,
        target_key=1,
        index_key=2,
        path=f"{root}/s{devices}.zarr",
    )
    data = IndexedDataset(DigitsSubset(101, tuples=True))
    if devices == 1:
        loader = DataLoader(data, batch_size=32, sampler=RankOrder(101, 16))
        kwargs: dict[str, Any] = {}
    else:  # Lightning gives each rank a shuffling DistributedSampler
        loader = DataLoader(data, batch_size=16, shuffle=False)
        kwargs = {"strategy": "ddp_spawn"}
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )
    trainer.fit(TinyClassifier(lr=0.5), train_dataloaders=loader)


@pytest.mark.ddp
def test_two_processes_give_the_scores_of_one_process_seeing_the_same_batches(
    tmp_path: Path,
) -> None:
    run_for_ddp(str(tmp_path), 1)
    run_for_ddp(str(tmp_path), 2)
    single, double = read(tmp_path / "s1.zarr"), read(tmp_path / "s2.zarr")
    assert double.attrs["world_size"] == 2
    assert double["index"].values.tolist() == single["index"].values.tolist() == list(range(101))
    assert double["global_step"].values.tolist() == single["global_step"].values.tolist()
    assert double["global_step"].values.tolist() == [4, 8]
    for name in SCORES:
        np.testing.assert_allclose(
            double[name].values, single[name].values, rtol=1e-5, atol=1e-6, err_msg=name
        )
    for name in ("accuracy", "forgetting", "first_learned"):
        np.testing.assert_array_equal(double[name].values, single[name].values, err_msg=name)
    # the weights moved: the epochs' losses differ
    assert np.abs(np.diff(single["loss"].values, axis=0)).max() > 1e-2
