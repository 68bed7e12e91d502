from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from sam_helpers import ManualSAMNet, SaveParams, SmallNet, reference_params

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.optim import SAM

STEPS = 3


@pytest.mark.parametrize(
    "sam", [{"rho": 0.2}, {"rho": 1.0, "norm_only": True}, {"rho": 0.5, "adaptive": True}]
)
def test_callback_equals_plain_sam_loop(
    trainer_kwargs: dict[str, Any], sam: dict[str, Any]
) -> None:
    model = SmallNet()
    trainer = Trainer(
        max_steps=STEPS, callbacks=[SharpnessAwareMinimization(**sam)], **trainer_kwargs
    )
    trainer.fit(model)
    assert isinstance(trainer.optimizers[0], SAM)
    ref = reference_params(STEPS, **sam)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], msg=name)


def test_logged_loss_is_first_pass(trainer_kwargs: dict[str, Any]) -> None:
    model = SmallNet()
    trainer = Trainer(
        max_steps=STEPS, callbacks=[SharpnessAwareMinimization(rho=0.5)], **trainer_kwargs
    )
    trainer.fit(model)
    assert [flag for _, flag in model.records] == [False, True] * STEPS
    first_pass_losses = [loss for loss, flag in model.records if not flag]
    perturbed = [loss for loss, flag in model.records if flag]
    assert perturbed[-1] != pytest.approx(first_pass_losses[-1])
    assert float(trainer.logged_metrics["train_loss"]) == pytest.approx(first_pass_losses[-1])
    assert trainer.callbacks[0].steps == STEPS  # type: ignore[attr-defined]


def test_batchnorm_statistics_from_first_pass_only(trainer_kwargs: dict[str, Any]) -> None:
    model = SmallNet(batchnorm=True)
    twin = SmallNet(batchnorm=True)
    trainer = Trainer(
        max_steps=1, callbacks=[SharpnessAwareMinimization(rho=2.0)], **trainer_kwargs
    )
    trainer.fit(model)
    batch = next(iter(twin.train_dataloader()))
    twin.train()
    twin(batch["x"])
    torch.testing.assert_close(model.norm.running_mean, twin.norm.running_mean)
    torch.testing.assert_close(model.norm.running_var, twin.norm.running_var)
    assert int(model.norm.num_batches_tracked) == 1


def test_gradient_clipping_applies_to_update(trainer_kwargs: dict[str, Any]) -> None:
    model = SmallNet(lr=1.0, momentum=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = Trainer(
        max_steps=1,
        gradient_clip_val=1e-3,
        gradient_clip_algorithm="norm",
        callbacks=[SharpnessAwareMinimization(rho=0.5)],
        **trainer_kwargs,
    )
    trainer.fit(model)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # SGD(lr=1) moves by the clipped second gradient, whose norm is the clip value
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-4)


def test_bf16_mixed_runs(trainer_kwargs: dict[str, Any]) -> None:
    model = SmallNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(
        max_steps=STEPS,
        precision="bf16-mixed",
        callbacks=[SharpnessAwareMinimization(rho=1.0, norm_only=True)],
        **trainer_kwargs,
    )
    trainer.fit(model)
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all()
        assert not torch.equal(p, before[n]), n
    ref = reference_params(STEPS, rho=1.0, norm_only=True)
    # bf16 autocast only: close to the fp32 run, not equal
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, ref[n], atol=5e-2, rtol=5e-2)


def test_accumulation_refused(trainer_kwargs: dict[str, Any]) -> None:
    trainer = Trainer(
        max_steps=1,
        accumulate_grad_batches=2,
        callbacks=[SharpnessAwareMinimization()],
        **trainer_kwargs,
    )
    with pytest.raises(MisconfigurationException, match="Use accumulate_grad_batches=1"):
        trainer.fit(SmallNet())
    trainer = Trainer(max_steps=1, accumulate_grad_batches=2, **trainer_kwargs)
    with pytest.raises(RuntimeError, match="accumulate_grad_batches=1"):
        trainer.fit(SmallNet(sam={"rho": 0.1}))


def test_refused_module_setups(trainer_kwargs: dict[str, Any]) -> None:
    trainer = Trainer(max_steps=1, callbacks=[SharpnessAwareMinimization()], **trainer_kwargs)
    with pytest.raises(MisconfigurationException, match=r"already lightning_climate\.optim\.SAM"):
        trainer.fit(SmallNet(sam={"rho": 0.1}))
    trainer = Trainer(max_steps=1, callbacks=[SharpnessAwareMinimization()], **trainer_kwargs)
    with pytest.raises(MisconfigurationException, match="needs automatic optimization"):
        trainer.fit(ManualSAMNet(sam={"rho": 0.1}))


def test_manual_optimization_recipe_works(trainer_kwargs: dict[str, Any]) -> None:
    model = ManualSAMNet(sam={"rho": 0.2})
    trainer = Trainer(max_steps=STEPS, **trainer_kwargs)
    trainer.fit(model)
    ref = reference_params(STEPS, rho=0.2)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], msg=name)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rho must be >= 0"):
        SharpnessAwareMinimization(rho=-0.1)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        SharpnessAwareMinimization(eta=-1.0)


def test_state_dict_round_trip() -> None:
    cb = SharpnessAwareMinimization(rho=0.3, norm_only=True)
    cb.steps = 7
    other = SharpnessAwareMinimization(rho=0.3, norm_only=True)
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == cb.state_dict()
    changed = SharpnessAwareMinimization(rho=0.9)
    with pytest.warns(UserWarning, match="checkpoint was trained with"):
        changed.load_state_dict(cb.state_dict())
    assert changed.steps == 7


def test_resume_continues_identically(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    sam = {"rho": 0.5, "norm_only": True}
    # one batch per epoch: a resumed run sees the same data whatever Lightning's loop restarts
    straight = SmallNet(n_samples=16)
    Trainer(max_steps=4, callbacks=[SharpnessAwareMinimization(**sam)], **trainer_kwargs).fit(
        straight
    )

    first = SmallNet(n_samples=16)
    trainer = Trainer(max_steps=2, callbacks=[SharpnessAwareMinimization(**sam)], **trainer_kwargs)
    trainer.fit(first)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["rho"] == 0.5
    assert saved["callbacks"]["SharpnessAwareMinimization"]["steps"] == 2

    resumed = SmallNet(n_samples=16)
    callback = SharpnessAwareMinimization(**sam)
    Trainer(max_steps=4, callbacks=[callback], **trainer_kwargs).fit(resumed, ckpt_path=ckpt)
    assert callback.steps == 4
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p, dict(straight.named_parameters())[name], msg=name)


def run_ddp_vs_single(
    tmp_path: Path, trainer_kwargs: dict[str, Any], callback: dict[str, Any] | None, **net: Any
) -> None:
    sam = [] if callback is None else [SharpnessAwareMinimization(**callback)]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    kwargs = {**trainer_kwargs, "deterministic": False, "max_steps": STEPS}
    # 16 samples: every step sees the whole data set (8 per rank under DDP), whatever the sampler
    Trainer(devices=1, callbacks=[SaveParams(single_dir), *sam], **kwargs).fit(
        SmallNet(batch_size=16, n_samples=16, **net)
    )
    Trainer(devices=2, strategy="ddp_spawn", callbacks=[SaveParams(ddp_dir), *sam], **kwargs).fit(
        SmallNet(batch_size=8, n_samples=16, **net)
    )
    single = torch.load(single_dir / "rank0.pt", weights_only=True)["state"]
    for rank in (0, 1):
        ddp = torch.load(ddp_dir / f"rank{rank}.pt", weights_only=True)["state"]
        for name, value in single.items():
            torch.testing.assert_close(
                ddp[name], value, atol=1e-5, rtol=1e-5, msg=f"rank {rank} {name}"
            )


@pytest.mark.ddp
def test_ddp_callback_full_sam_equals_single_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    run_ddp_vs_single(tmp_path, trainer_kwargs, callback={"rho": 0.5})


@pytest.mark.ddp
def test_ddp_optimizer_sam_on_equals_single_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    run_ddp_vs_single(tmp_path, trainer_kwargs, None, sam={"rho": 1.0, "norm_only": True})


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_refused(strategy: type) -> None:
    # these strategies need a GPU to build a Trainer; setup only reads the attributes below
    trainer = SimpleNamespace(
        strategy=strategy.__new__(strategy), precision_plugin=None, accumulate_grad_batches=1
    )
    with pytest.raises(MisconfigurationException, match=f"does not support {strategy.__name__}"):
        SharpnessAwareMinimization().setup(trainer, SmallNet(), "fit")  # type: ignore[arg-type]
