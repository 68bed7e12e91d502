"""The package's digits_samon example, resumed through the CLI, continues like the straight run."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import EXAMPLES, RunCLI
from exact_resume_helpers import assert_same_training_state


def cli_fit(run_cli: RunCLI, root: Path, epochs: int, *extra: str) -> list[Path]:
    """Train the example for ``epochs`` (4 of its 17 shuffled batches each) and list the checkpoints."""
    run_cli(
        "fit",
        EXAMPLES / "digits_samon.yaml",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(root),
        # dropout, so the resumed run also needs the random states of the checkpoint
        "--model.init_args.model.init_args.model_kwargs",
        "{drop_rate: 0.3}",
        *extra,
        tiny=False,
    )
    return sorted(root.rglob("*.ckpt"))


def test_digits_samon_resumed_through_the_cli_equals_the_straight_run(
    tmp_path: Path, run_cli: RunCLI
) -> None:
    """Every task brings ExactResume: no callback to add."""
    (straight,) = cli_fit(run_cli, tmp_path / "a", 2)
    (first,) = cli_fit(run_cli, tmp_path / "b", 1)
    assert first.name == "epoch=0-step=4.ckpt"
    assert "ExactResume" in torch.load(first, weights_only=True)["callbacks"]
    resumed = [
        p for p in cli_fit(run_cli, tmp_path / "b", 2, "--ckpt_path", str(first)) if p != first
    ]
    assert straight.name == resumed[-1].name == "epoch=1-step=8.ckpt"
    assert_same_training_state(straight, resumed[-1])
