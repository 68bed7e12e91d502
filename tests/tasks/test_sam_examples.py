from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, RunCLI

DIGITS = ["digits_sgd.yaml", "digits_sam.yaml", "digits_samon.yaml", "digits_samon_vit.yaml"]


@pytest.mark.parametrize("name", DIGITS)
def test_digits_examples_run(name: str, monkeypatch: pytest.MonkeyPatch, run_cli: RunCLI) -> None:
    from lightning_climate.optim import SAM

    steps: list[int] = []
    original = SAM.step

    def counting_step(self: SAM, closure: object = None) -> object:
        steps.append(1)
        return original(self, closure)

    monkeypatch.setattr(SAM, "step", counting_step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("fit", EXAMPLES / name, "--trainer.fast_dev_run", "1", tiny=False)
    # the examples give the model as a module (class_path: TimmModel), not a deprecated name
    assert not [w for w in caught if "is deprecated; pass a module" in str(w.message)]
    # the SGD baseline never builds SAM; every other example takes one SAM step
    assert len(steps) == (0 if name == "digits_sgd.yaml" else 1)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("variant", ["sgd", "sam", "samon"])
def test_cifar_examples_run_on_generated_files(
    variant: str, tmp_path: Path, run_cli: RunCLI
) -> None:
    from lightning_climate.datasets.cifar import write_cifar

    write_cifar(tmp_path / "data", 100, "python", n_train=300, n_test=20)
    run_cli(
        "fit",
        EXAMPLES / f"cifar100_wrn28_10_{variant}.yaml",
        "--trainer.fast_dev_run",
        "1",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.val_fraction",
        "0.4",  # a stratified split of 300 images needs at least 100 on each side
        "--data.init_args.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        # a WRN-10-1 stands in for WRN-28-10 so that one CPU step takes a moment
        "--model.init_args.model.init_args.depth",
        "10",
        "--model.init_args.model.init_args.widen_factor",
        "1",
        root=str(tmp_path / "data"),
        tiny=False,
    )
    assert (tmp_path / "data" / "cifar-100-python" / "train").is_file()
