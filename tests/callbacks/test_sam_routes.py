"""SAM from the user's side: every way to choose it trains bound, also under 16-mixed."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from sam_helpers import ManualSAMNet, SaveParams, SmallNet, reference_params
from torch import Tensor, nn

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.main import main
from lightning_climate.optim import SAM

STEPS = 3
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}


def fp16_with_scaler(**scaler: Any) -> MixedPrecision:
    # Trainer(precision="16-mixed") silently becomes bf16 on CPU; this is what it builds on a GPU.
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", **scaler))


def assert_trained_bound(run: dict[str, Any], steps: int = STEPS, **sam: Any) -> None:
    """Weights and BatchNorm statistics equal the bound reference; the logged loss is pass 1's."""
    ref = reference_params(steps, batchnorm=True, **sam)
    for name, value in ref.items():
        torch.testing.assert_close(run["state"][name], value, msg=name)
    assert int(run["state"]["norm.num_batches_tracked"]) == steps  # one update per step
    assert [flag for _, flag in run["records"]] == [False, True] * steps
    first, perturbed = run["records"][-2][0], run["records"][-1][0]
    assert run["logged_loss"] == pytest.approx(first)
    assert run["logged_loss"] != pytest.approx(perturbed)


def fit_and_read(trainer_kwargs: dict[str, Any], model: SmallNet, tmp_path: Path) -> dict:
    Trainer(max_steps=STEPS, callbacks=[SaveParams(tmp_path)], **trainer_kwargs).fit(model)
    return torch.load(tmp_path / "rank0.pt", weights_only=True)


def test_own_configure_optimizers_binds_itself(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    # SAM.wrap(SGD) returned from the module's own configure_optimizers, no bind() call
    run = fit_and_read(
        trainer_kwargs, SmallNet(batchnorm=True, sam={"rho": 0.5}, bind=False), tmp_path
    )
    assert_trained_bound(run, rho=0.5)


def test_unbound_batchnorm_model_refused_at_first_step() -> None:
    # plain PyTorch, no LightningModule to find: stopped before the perturbed pass
    model = SmallNet(batchnorm=True)
    opt = SAM(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1))
    batch = next(iter(model.train_dataloader()))
    before = model.norm.running_mean.clone()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"call `optimizer.bind\(model\)`"):
        opt.step(closure)
    assert int(model.norm.num_batches_tracked) == 1  # only the first pass ran
    assert not torch.equal(model.norm.running_mean, before)
    # bound, the same step runs
    opt.bind(model).step(closure)


def run_cli(tmp_path: Path, config: dict[str, Any], **trainer: Any) -> dict[str, Any]:
    config["data"] = {"class_path": "sam_helpers.RegressionData"}
    config["trainer"] = {
        **trainer,
        "max_steps": STEPS,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
        "callbacks": [
            {"class_path": "sam_helpers.SaveParams", "init_args": {"directory": str(tmp_path)}}
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    return torch.load(tmp_path / "rank0.pt", weights_only=True)


def test_yaml_optimizer_callable_binds_itself(tmp_path: Path) -> None:
    # model.init_args.optimizer: the module builds SAM from an OptimizerCallable, never binds it
    sam = {
        "class_path": "lightning_climate.optim.SAM",
        "init_args": {"rho": 0.5, "base_optimizer": SGD},
    }
    model = {
        "class_path": "sam_helpers.InjectedNet",
        "init_args": {"batchnorm": True, "optimizer": sam},
    }
    assert_trained_bound(run_cli(tmp_path, {"model": model}), rho=0.5)


def test_yaml_top_level_optimizer_accepted_and_bound(tmp_path: Path) -> None:
    # LightningCLI's top-level optimizer: replaces the module's own configure_optimizers (SGD)
    sam = {
        "class_path": "lightning_climate.optim.SAM",
        "init_args": {"rho": 0.5, "base_optimizer": SGD},
    }
    model = {"class_path": "sam_helpers.SmallNet", "init_args": {"batchnorm": True}}
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        run = run_cli(tmp_path, {"model": model, "optimizer": sam})
    assert_trained_bound(run, rho=0.5)


def test_yaml_top_level_optimizer_under_16_mixed(tmp_path: Path) -> None:
    # bound when Lightning asks for the optimizers (ClimateCLI), so 16-mixed works from step 1
    sam = {
        "class_path": "lightning_climate.optim.SAM",
        "init_args": {"rho": 0.5, "base_optimizer": SGD},
    }
    model = {"class_path": "sam_helpers.SmallNet", "init_args": {"batchnorm": True}}
    scaler = {
        "class_path": "torch.amp.GradScaler",
        "init_args": {"device": "cpu", "init_scale": 256.0},
    }
    plugin = {
        "class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
        "init_args": {"precision": "16-mixed", "device": "cpu", "scaler": scaler},
    }
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        run = run_cli(tmp_path, {"model": model, "optimizer": sam}, plugins=[plugin])
    ref = reference_params(STEPS, batchnorm=True, rho=0.5)
    for name, value in ref.items():
        torch.testing.assert_close(run["state"][name], value, atol=2e-3, rtol=2e-3, msg=name)
    assert [flag for _, flag in run["records"]] == [False, True] * STEPS


@pytest.mark.parametrize("route", ["callback", "optimizer", "unbound optimizer", "manual"])
def test_16_mixed_matches_fp32_sam(
    trainer_kwargs: dict[str, Any], tmp_path: Path, route: str
) -> None:
    sam = {"rho": 0.5}
    net = ManualSAMNet if route == "manual" else SmallNet
    model = net(batchnorm=True, sam=None if route == "callback" else sam, bind=route == "optimizer")
    callbacks = [SharpnessAwareMinimization(**sam)] if route == "callback" else []
    plugin = fp16_with_scaler(init_scale=2.0**8)  # 2**16 overflows this model's fp16 passes
    Trainer(max_steps=STEPS, plugins=[plugin], callbacks=callbacks, **trainer_kwargs).fit(model)
    ref = reference_params(STEPS, batchnorm=True, **sam)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ref[name], atol=2e-3, rtol=2e-3, msg=name)
    assert [flag for _, flag in model.records] == [False, True] * STEPS
    assert plugin.scaler.get_scale() == 2.0**8  # no overflow, no growth within 2000 steps


@pytest.mark.parametrize("perturbed_pass", [False, True])
@pytest.mark.parametrize("route", ["callback", "optimizer"])
def test_16_mixed_overflow_skips_exactly_one_step(
    trainer_kwargs: dict[str, Any], route: str, perturbed_pass: bool
) -> None:
    sam = {"rho": 0.5}
    model = SmallNet(
        batchnorm=True, sam=None if route == "callback" else sam, overflow_at=(1, perturbed_pass)
    )
    callbacks = [SharpnessAwareMinimization(**sam)] if route == "callback" else []
    # growth_interval=1: every finite step doubles the scale, so the final scale counts updates
    plugin = fp16_with_scaler(init_scale=2.0**8, growth_interval=1)
    trainer = Trainer(max_steps=STEPS, plugins=[plugin], callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model)
    assert plugin.scaler.get_scale() == 2.0**9  # x2, /2 (the overflow), x2: one update a step
    # batch 1 is consumed without an update (weights restored, momentum untouched)
    ref = reference_params(STEPS, batchnorm=True, skip=(1,), **sam)
    params = dict(model.named_parameters())
    for name, value in params.items():
        torch.testing.assert_close(value, ref[name], atol=2e-3, rtol=2e-3, msg=name)
    # an overflow in pass 1 skips the perturbed pass too
    flags = [flag for _, flag in model.records]
    assert (
        flags == [False, True, False, True, False, True]
        if perturbed_pass
        else [False, True, False, False, True]
    )


def test_16_mixed_clips_the_unscaled_second_gradient(trainer_kwargs: dict[str, Any]) -> None:
    model = SmallNet(lr=1.0, momentum=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    Trainer(
        max_steps=1,
        gradient_clip_val=1e-3,
        plugins=[fp16_with_scaler(init_scale=2.0**8)],
        callbacks=[SharpnessAwareMinimization(rho=0.5)],
        **trainer_kwargs,
    ).fit(model)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # SGD(lr=1) moves by the clipped gradient: its norm is the clip value, not 256 times it
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)


def test_16_mixed_unbound_before_first_step_names_the_fix(trainer_kwargs: dict[str, Any]) -> None:
    # built outside the module and handed in unbound, as a plain LightningCLI top-level optimizer
    model = SmallNet()
    opt = SAM(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1))
    model.configure_optimizers = lambda: opt  # type: ignore[method-assign]
    trainer = Trainer(max_steps=1, plugins=[fp16_with_scaler()], **trainer_kwargs)
    with pytest.raises(RuntimeError, match="must know its LightningModule before the first step"):
        trainer.fit(model)
