"""A run resumed from a checkpoint continues bit for bit like the uninterrupted run.

Each test trains a user's own module (dropout, and augmentation drawing from torch, numpy and
python) straight for three epochs of six shuffled batches, saving a checkpoint at every epoch end
(or every 4 steps), then resumes a second run from one of those checkpoints and compares the final
weights and optimizer states bit for bit.
"""

from __future__ import annotations

import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from exact_resume_helpers import (
    assert_equal_nested,
    assert_same_training_state,
    fit,
)

from lightning_climate.callbacks.exact_resume import collect_rng_states, restore_rng_states

EPOCHS = 3


def checkpoint(root: Path, step: int) -> Path:
    (path,) = root.glob(f"*-step={step}.ckpt")
    return path


def draws() -> list[float]:
    return [torch.rand(1).item(), float(np.random.rand()), random.random()]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save(collect_rng_states(), tmp_path / "rng.pt")
    expected = draws()
    draws()
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


@pytest.mark.parametrize(
    ("kind", "num_workers", "validate"),
    [("plain", 0, True), ("resumable", 0, True), ("plain", 2, True), ("plain", 0, False)],
)
def test_resume_at_epoch_end_equals_uninterrupted_run(
    tmp_path: Path, kind: str, num_workers: int, validate: bool
) -> None:
    """Checkpoints written after validation, or at the train epoch end without validation."""
    settings = {"kind": kind, "num_workers": num_workers, "validate": validate}
    straight = fit(tmp_path / "a", EPOCHS, **settings)
    resumed = fit(tmp_path / "b", EPOCHS, checkpoint(tmp_path / "a", 6), **settings)
    assert straight.name == resumed.name == "epoch=2-step=18.ckpt"
    assert_same_training_state(straight, resumed)


def test_without_the_callback_the_resumed_run_differs(tmp_path: Path) -> None:
    """The set-up draws random numbers after the checkpoint, so the test above is not trivial."""
    straight = fit(tmp_path / "a", EPOCHS, exact=False)
    with pytest.warns(UserWarning, match="holds no random states"):
        resumed = fit(tmp_path / "b", EPOCHS, checkpoint(tmp_path / "a", 6), exact=True)
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_training_state(straight, resumed)


def test_resume_mid_epoch_with_resumable_loader_equals_uninterrupted_run(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # also writes after the last batch of epoch 1 (step 12), before its validation draws
        straight = fit(tmp_path / "a", EPOCHS, kind="resumable", every_n_train_steps=4)
    assert not [w for w in caught if "ExactResume" in str(w.message)]
    # step 8 is the third of the six batches of epoch 1
    resumed = fit(
        tmp_path / "b",
        EPOCHS,
        checkpoint(tmp_path / "a", 8),
        kind="resumable",
        every_n_train_steps=4,
    )
    assert straight.name == resumed.name == "epoch=2-step=16.ckpt"
    assert_same_training_state(straight, resumed)


def test_resume_mid_epoch_with_plain_loader_warns(tmp_path: Path) -> None:
    fit(tmp_path / "a", 1, every_n_train_steps=4)
    with pytest.warns(UserWarning, match=r"written mid-epoch \(epoch 0, after 4 batches\)"):
        fit(tmp_path / "b", 2, checkpoint(tmp_path / "a", 4), every_n_train_steps=4)


def test_draws_after_an_epoch_end_checkpoint_warn_and_do_break_the_resume(tmp_path: Path) -> None:
    # checkpoints at on_validation_end; the module's on_train_epoch_end then draws
    settings = {"draw_at_epoch_end": True, "save_on_train_epoch_end": False}
    with pytest.warns(UserWarning, match="drawn after the checkpoint at the end of epoch 0"):
        straight = fit(tmp_path / "a", EPOCHS, **settings)
    with pytest.warns(UserWarning, match="drawn after the checkpoint at the end of epoch 1"):
        resumed = fit(tmp_path / "b", EPOCHS, checkpoint(tmp_path / "a", 6), **settings)
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_training_state(straight, resumed)


def test_resume_with_another_number_of_processes_warns(tmp_path: Path) -> None:
    fit(tmp_path / "a", 1)
    state = torch.load(checkpoint(tmp_path / "a", 6), weights_only=True)
    assert len(state["callbacks"]["ExactResume"]["rng"]) == 1
    state["callbacks"]["ExactResume"]["rng"] *= 2  # as if written by two processes
    torch.save(state, tmp_path / "two.ckpt")
    with pytest.warns(UserWarning, match="written by 2 process.*resumes with 1"):
        fit(tmp_path / "b", 2, tmp_path / "two.ckpt")


def test_resume_with_persistent_workers_warns(tmp_path: Path) -> None:
    fit(tmp_path / "a", 1, kind="persistent", num_workers=1)
    with pytest.warns(UserWarning, match="persistent_workers=False"):
        fit(tmp_path / "b", 2, checkpoint(tmp_path / "a", 6), kind="persistent", num_workers=1)


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform == "win32", reason="gloo ddp_spawn test runs on POSIX")
@pytest.mark.parametrize("kind", ["plain", pytest.param("resumable", marks=pytest.mark.slow)])
def test_ddp_resume_restores_each_ranks_states(tmp_path: Path, kind: str) -> None:
    """Two processes with different random streams: each must get its own states back.

    ``plain`` is a user's shuffled loader, which Lightning gives a DistributedSampler;
    ``resumable`` is what the package's datamodules use.
    """
    straight = fit(tmp_path / "a", EPOCHS, kind=kind, devices=2, rank_streams=True)
    first = checkpoint(tmp_path / "a", 3)  # 48 samples / 2 ranks / batch 8 = 3 steps per epoch
    per_rank = torch.load(first, weights_only=True)["callbacks"]["ExactResume"]["rng"]
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    resumed = fit(tmp_path / "b", EPOCHS, first, kind=kind, devices=2, rank_streams=True)
    assert straight.name == resumed.name == "epoch=2-step=9.ckpt"
    assert_same_training_state(straight, resumed)
    assert_equal_nested(
        torch.load(straight, weights_only=True)["callbacks"]["ExactResume"]["rng"],
        torch.load(resumed, weights_only=True)["callbacks"]["ExactResume"]["rng"],
    )
