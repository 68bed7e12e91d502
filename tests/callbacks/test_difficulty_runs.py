"""DifficultyScores across a run's life: owning its store, crashes, hard kills and resumes.

Resumed runs train on an unshuffled loader, so they must reproduce an uninterrupted run's scores
bit for bit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difficulty_helpers import TinyClassifier, TinyDigits, ValidatedClassifier, read
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_climate.callbacks import DifficultyScores
from lightning_climate.io import RecordStore

SCORES = ["loss", "accuracy", "forgetting", "vog"]


def uninterrupted(
    trainer_kwargs: dict[str, Any], path: Path, epochs: int = 4, val: bool = False
) -> Any:
    torch.manual_seed(0)
    model = ValidatedClassifier() if val else TinyClassifier()
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[DifficultyScores(scores=SCORES, path=str(path))],
        **trainer_kwargs,
    )
    trainer.fit(model, TinyDigits(shuffle=False, val=val))
    return read(path)


def assert_same_scores(a: Any, b: Any) -> None:
    assert a["epoch"].values.tolist() == b["epoch"].values.tolist()
    assert a["global_step"].values.tolist() == b["global_step"].values.tolist()
    for name in SCORES:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_crash_keeps_written_epochs_and_resume_continues_bit_for_bit(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    reference = uninterrupted(trainer_kwargs, tmp_path / "reference.zarr")
    path = tmp_path / "s.zarr"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=4,
        callbacks=[DifficultyScores(scores=SCORES, path=str(path)), ckpt],
        **trainer_kwargs,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyClassifier(crash_at_epoch=2), TinyDigits(shuffle=False))
    assert read(path)["epoch"].values.tolist() == [0, 1]

    resumed = DifficultyScores(scores=SCORES, path=str(path))
    trainer = Trainer(
        max_epochs=4,
        callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt")],
        **trainer_kwargs,
    )
    trainer.fit(
        TinyClassifier(), TinyDigits(shuffle=False), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert_same_scores(read(path), reference)
    assert len(resumed.accuracy_trace) == 4  # the restored trace of epochs 0-1, then 2-3
    assert int(resumed.vog.count.max()) == 4


def test_resume_drops_records_written_after_the_checkpoint(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.zarr"
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="e{epoch}", save_top_k=-1, every_n_epochs=1
    )
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=3, callbacks=[DifficultyScores(path=str(path)), ckpt], **trainer_kwargs
    )
    trainer.fit(TinyClassifier(), TinyDigits())
    assert read(path)["epoch"].values.tolist() == [0, 1, 2]
    # resume from the checkpoint of epoch 0: the records of epochs 1-2 belong to the abandoned branch
    trainer = Trainer(max_epochs=2, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    with pytest.warns(
        UserWarning, match=r"dropped the records \[\(1, 14\), \(2, 21\)\] written after"
    ):
        trainer.fit(
            TinyClassifier(), TinyDigits(), ckpt_path=str(tmp_path / "ckpt" / "eepoch=0.ckpt")
        )
    ds = read(path)
    assert ds["epoch"].values.tolist() == [0, 1]
    assert ds["global_step"].values.tolist() == [7, 14]


class NoTraining(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise AssertionError("training must not start")


@pytest.mark.parametrize("kind", ["store", "netcdf", "directory"])
def test_new_run_never_overwrites_what_is_at_its_path(
    kind: str, trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "s.zarr"
    if kind == "store":  # another run's scores
        torch.manual_seed(0)
        Trainer(max_epochs=1, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs).fit(
            TinyClassifier(), TinyDigits()
        )
        before = read(path)
    elif kind == "netcdf":
        path.write_bytes(b"CDF\x01 someone's data")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("keep me")
    trainer = Trainer(max_epochs=1, callbacks=[DifficultyScores(path=str(path))], **trainer_kwargs)
    with pytest.raises(
        FileExistsError, match=r"s\.zarr already exists .*never overwrites it\. Pass another `path`"
    ):
        trainer.fit(NoTraining(), TinyDigits())
    if kind == "store":
        assert_same_scores_subset(read(path), before)
    elif kind == "netcdf":
        assert path.read_bytes() == b"CDF\x01 someone's data"
    else:
        assert (path / "notes.txt").read_text() == "keep me"


def assert_same_scores_subset(a: Any, b: Any) -> None:
    for name in b.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_resume_with_the_default_path_continues_the_runs_own_store(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    reference = uninterrupted(trainer_kwargs, tmp_path / "reference.zarr")
    kwargs = {**trainer_kwargs, "logger": CSVLogger(tmp_path, name="log")}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=4, callbacks=[DifficultyScores(scores=SCORES), ckpt], **kwargs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyClassifier(crash_at_epoch=2), TinyDigits(shuffle=False))
    kwargs = {**trainer_kwargs, "logger": CSVLogger(tmp_path, name="log")}
    trainer = Trainer(max_epochs=4, callbacks=[DifficultyScores(scores=SCORES)], **kwargs)
    trainer.fit(
        TinyClassifier(), TinyDigits(shuffle=False), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert trainer.log_dir.endswith("version_1")
    stores = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("difficulty_scores.zarr")
    )
    assert stores == ["log/version_0/difficulty_scores.zarr"]
    assert_same_scores(read(tmp_path / stores[0]), reference)


class DurableCheck(DifficultyScores):
    """Asserts at every checkpoint that the store holds exactly the records the state lists."""

    checks = 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.scored:
            assert RecordStore(state["path"]).records() == state["scored"]
            DurableCheck.checks += 1
        return state


def test_checkpoint_lists_only_durable_records(
    trainer_kwargs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_append = RecordStore.append

    def append(self: RecordStore, *args: Any) -> None:
        time.sleep(0.3)  # the write is still in flight when ModelCheckpoint saves
        slow_append(self, *args)

    monkeypatch.setattr(RecordStore, "append", append)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    callback = DurableCheck(path=str(tmp_path / "s.zarr"))
    Trainer(max_epochs=3, callbacks=[callback, ckpt], **trainer_kwargs).fit(
        TinyClassifier(), TinyDigits()
    )
    assert DurableCheck.checks == 3


def test_checkpoint_saved_before_scoring_gets_its_record_computed_again(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """ModelCheckpoint saves at validation end, before the epoch's record is scored.

    Lightning restarts that epoch's end on resume, so the record is computed again.
    """
    reference = uninterrupted(trainer_kwargs, tmp_path / "reference.zarr", val=True)
    path = tmp_path / "s.zarr"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=False)
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=4,
        callbacks=[DifficultyScores(scores=SCORES, path=str(path)), ckpt],
        **trainer_kwargs,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(ValidatedClassifier(crash_at_epoch=2), TinyDigits(shuffle=False, val=True))
    trainer = Trainer(
        max_epochs=4, callbacks=[DifficultyScores(scores=SCORES, path=str(path))], **trainer_kwargs
    )
    trainer.fit(
        ValidatedClassifier(),
        TinyDigits(shuffle=False, val=True),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert_same_scores(read(path), reference)


_KILLED_RUN = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from difficulty_helpers import TinyClassifier, TinyDigits
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_climate.callbacks import DifficultyScores
from lightning_climate.io import RecordStore

commit = RecordStore._commit
def kill_in_third_append(self):
    if self._count == 2:  # chunks and shapes of record 2 are written, the commit is not
        os._exit(9)
    commit(self)
RecordStore._commit = kill_in_third_append
torch.manual_seed(0)
trainer = Trainer(max_epochs=4, callbacks=[DifficultyScores(scores={scores!r}, path={path!r}),
    ModelCheckpoint(dirpath={ckpt!r}, save_last=True)], accelerator="cpu", logger=False,
    enable_progress_bar=False, enable_model_summary=False, deterministic=True, default_root_dir={root!r})
trainer.fit(TinyClassifier(), TinyDigits(shuffle=False))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: about 20 s on a busy machine
def test_hard_kill_during_an_append_then_resume(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    reference = uninterrupted(trainer_kwargs, tmp_path / "reference.zarr")
    path, ckpt = tmp_path / "s.zarr", tmp_path / "ckpt"
    script = _KILLED_RUN.format(
        tests=str(Path(__file__).parent),
        scores=SCORES,
        path=str(path),
        ckpt=str(ckpt),
        root=str(tmp_path),
    )
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert read(path)["epoch"].values.tolist() == [0, 1]  # record 2 is invisible
    assert (
        torch.load(ckpt / "last.ckpt", weights_only=False)["epoch"] == 1
    )  # no checkpoint of epoch 2
    trainer = Trainer(
        max_epochs=4, callbacks=[DifficultyScores(scores=SCORES, path=str(path))], **trainer_kwargs
    )
    with pytest.warns(UserWarning, match="removed the leftovers of an interrupted write"):
        trainer.fit(TinyClassifier(), TinyDigits(shuffle=False), ckpt_path=str(ckpt / "last.ckpt"))
    assert_same_scores(read(path), reference)
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.glob(".s.zarr.*"))


def test_records_missing_from_the_store_are_reported(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    reference = uninterrupted(trainer_kwargs, tmp_path / "reference.zarr")
    path = tmp_path / "s.zarr"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    torch.manual_seed(0)
    callbacks = [DifficultyScores(scores=SCORES, path=str(path)), ckpt]
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(max_epochs=4, callbacks=callbacks, **trainer_kwargs).fit(
            TinyClassifier(crash_at_epoch=2), TinyDigits(shuffle=False)
        )
    shutil.rmtree(path)  # deleted by hand
    trainer = Trainer(
        max_epochs=4, callbacks=[DifficultyScores(scores=SCORES, path=str(path))], **trainer_kwargs
    )
    with pytest.warns(
        UserWarning, match=r"is missing; its records \[\(0, 7\), \(1, 14\)\] are lost"
    ):
        trainer.fit(
            TinyClassifier(),
            TinyDigits(shuffle=False),
            ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        )
    ds = read(path)
    assert ds["epoch"].values.tolist() == [2, 3]
    np.testing.assert_array_equal(ds["loss"].values, reference["loss"].values[2:])


def test_checkpoint_of_an_earlier_version_is_reported(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    callback = DifficultyScores(path=str(tmp_path / "s.zarr"))
    callback.load_state_dict({"scored": [(0, 7)], "index_values": None, "accuracy_trace": []})
    trainer = Trainer(max_epochs=2, callbacks=[callback], **trainer_kwargs)
    with pytest.warns(
        UserWarning, match=r"lists records \[\(0, 7\)\] of a score file written by an earlier"
    ):
        trainer.fit(TinyClassifier(), TinyDigits())
    assert read(tmp_path / "s.zarr")["epoch"].values.tolist() == [1]  # epoch 0 was already scored
