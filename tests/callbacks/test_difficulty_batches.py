"""DifficultyScores on users' batches: (x, y) tuples, ids from positions, and errors at fit start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difficulty_helpers import DigitsSubset, TinyClassifier, TinyDigits, fit, read
from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_climate.callbacks import DifficultyScores
from lightning_climate.callbacks.difficulty_probe import BatchFormat, positions


def test_tuple_batches_with_positions_equal_dict_batches_with_ids(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    scores = ["loss", "accuracy", "margin", "grand"]
    fit(trainer_kwargs, DifficultyScores(scores=scores, path=str(tmp_path / "d.zarr")))
    tuples = DifficultyScores(
        scores=scores, input_key=0, target_key=1, index_key=None, path=str(tmp_path / "t.zarr")
    )
    fit(trainer_kwargs, tuples, data=TinyDigits(tuples=True))
    # the docs' example: a plain DataLoader of (x, y) given to trainer.fit, no datamodule
    torch.manual_seed(0)
    model = TinyClassifier()
    plain = DifficultyScores(
        scores=scores, input_key=0, target_key=1, index_key=None, path=str(tmp_path / "p.zarr")
    )
    loader = DataLoader(DigitsSubset(101, tuples=True), batch_size=16, shuffle=True)
    Trainer(max_epochs=2, callbacks=[plain], **trainer_kwargs).fit(model, train_dataloaders=loader)
    a = read(tmp_path / "d.zarr")
    for other in ("t.zarr", "p.zarr"):
        b = read(tmp_path / other)
        assert b["index"].values.tolist() == list(range(101))
        for name in scores:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


class NoTraining(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        raise AssertionError("the batch format must be checked before training starts")


def fails_at_fit_start(
    trainer_kwargs: dict[str, Any], callback: DifficultyScores, **data: Any
) -> Any:
    trainer = Trainer(max_epochs=1, callbacks=[callback], **trainer_kwargs)
    return lambda: trainer.fit(NoTraining(), TinyDigits(**data))


def test_tuple_batches_with_default_keys_name_the_fix(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    run = fails_at_fit_start(
        trainer_kwargs, DifficultyScores(path=str(tmp_path / "s.zarr")), tuples=True
    )
    with pytest.raises(
        TypeError, match=r"lists of length 2.*pass input_key=0, target_key=1, index_key=None"
    ):
        run()
    assert not (tmp_path / "s.zarr").exists()


def test_missing_index_key_names_the_fix(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    callback = DifficultyScores(index_key="idx", path=str(tmp_path / "s.zarr"))
    with pytest.raises(
        KeyError,
        match=r"no key\(s\) \['idx'\]; it has \['image', 'label', 'index'\].*index_key=None",
    ):
        fails_at_fit_start(trainer_kwargs, callback)()


def test_wrong_target_and_logits_are_refused_at_fit_start(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    callback = DifficultyScores(target_key="image", path=str(tmp_path / "s.zarr"))
    with pytest.raises(
        TypeError, match=r"batch\['image'\] must be a 1-D integer tensor .*torch.float32"
    ):
        fails_at_fit_start(trainer_kwargs, callback)()
    callback = DifficultyScores(forward=flat_logits, path=str(tmp_path / "t.zarr"))
    with pytest.raises(
        ValueError, match=r"needs \(batch, classes\) logits from the model, got \(160,\)"
    ):
        fails_at_fit_start(trainer_kwargs, callback)()


def flat_logits(module: torch.nn.Module, x: Tensor) -> Tensor:
    return module(x).flatten()


def test_unwritable_path_fails_at_setup(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    callback = DifficultyScores(path=str(tmp_path / "a_file" / "s.zarr"))
    with pytest.raises(
        OSError, match=r"cannot write its scores to .*a_file/s\.zarr.*Pass a writable"
    ):
        fails_at_fit_start(trainer_kwargs, callback)()


def test_positions_follow_the_distributed_shard() -> None:
    data = DigitsSubset(11)
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    assert positions(loader).tolist() == [1, 3, 5, 7, 9, 0]  # rank 1's shard, padded with 0
    assert positions(DataLoader(data, batch_size=4)).tolist() == list(range(11))


def test_batch_format_unpacks_dicts_and_tuples() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([1, 2])
    assert BatchFormat().unpack({"image": x, "label": y, "index": torch.tensor([7, 9])})[
        2
    ].tolist() == [7, 9]
    got = BatchFormat(0, 1, None).unpack((x, y))
    assert got[0] is x and got[1] is y and got[2] is None
    with pytest.raises(TypeError, match=r"batch\['index'\] must hold one integer id per example"):
        BatchFormat().unpack({"image": x, "label": y, "index": torch.tensor([0.5, 1.5])})
