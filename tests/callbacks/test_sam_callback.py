from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from sam_helpers import (
    ManualSAMNet,
    RegressionSet,
    SaveParams,
    SmallNet,
    reference_params,
)
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.optim import SAM

STEPS = 3


@pytest.mark.parametrize(
    "sam",
    [
        {"rho": 0.2},
        {"rho": 1.0, "norm_only": True},
        {"rho": 0.5, "adaptive": True},
        {"rho": 0.5, "every_n_steps": 2},
    ],
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
    with pytest.raises(ValueError, match="perturbation must be 'global' or 'local'"):
        SharpnessAwareMinimization(perturbation="per-device")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        SharpnessAwareMinimization(every_n_steps=0)


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


def fit_ddp(
    directory: Path, trainer_kwargs: dict[str, Any], callbacks: list[Any], **net: Any
) -> list[dict[str, Any]]:
    """Two ranks of 8 samples each (16 in all); each rank's saved run (see SaveParams)."""
    directory.mkdir()
    strategy = DDPStrategy(start_method="spawn")
    kwargs = {**trainer_kwargs, "deterministic": False, "max_steps": STEPS}
    Trainer(
        devices=2, strategy=strategy, callbacks=[SaveParams(directory), *callbacks], **kwargs
    ).fit(SmallNet(batch_size=8, n_samples=16, **net))
    return [torch.load(directory / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def run_ddp_vs_single(
    tmp_path: Path, trainer_kwargs: dict[str, Any], callback: dict[str, Any] | None, **net: Any
) -> list[dict[str, Any]]:
    sam = [] if callback is None else [SharpnessAwareMinimization(**callback)]
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    kwargs = {**trainer_kwargs, "deterministic": False, "max_steps": STEPS}
    # 16 samples: every step sees the whole data set (8 per rank under DDP), whatever the sampler
    Trainer(devices=1, callbacks=[SaveParams(single_dir), *sam], **kwargs).fit(
        SmallNet(batch_size=16, n_samples=16, **net)
    )
    runs = fit_ddp(tmp_path / "ddp", trainer_kwargs, sam, **net)
    single = torch.load(single_dir / "rank0.pt", weights_only=True)["state"]
    for rank, run in enumerate(runs):
        for name, value in single.items():
            torch.testing.assert_close(
                run["state"][name], value, atol=1e-5, rtol=1e-5, msg=f"rank {rank} {name}"
            )
    return runs


@pytest.mark.ddp
def test_ddp_callback_full_sam_equals_single_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    runs = run_ddp_vs_single(tmp_path, trainer_kwargs, callback={"rho": 0.5})
    # global perturbation: DDP all-reduces (one bucket) in both passes of every step
    assert runs[0]["allreduces"] == [False, True] * STEPS


@pytest.mark.ddp
def test_ddp_optimizer_sam_on_equals_single_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    runs = run_ddp_vs_single(tmp_path, trainer_kwargs, None, sam={"rho": 1.0, "norm_only": True})
    # SAM-ON averages its few first-pass gradients by hand: DDP reduces only the second pass
    assert runs[0]["allreduces"] == [True] * STEPS


def local_reference(steps: int, rho: float, local: bool) -> dict[str, Tensor]:
    """Two ranks' halves by hand: each perturbs with its own (local) or the mean gradient, then
    the two perturbed gradients are averaged into one SGD step."""
    model = SmallNet(n_samples=16)
    params = list(model.parameters())
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    data = RegressionSet(16)
    # Lightning's DistributedSampler for training: shuffled with seed 0, one epoch per step here
    samplers = [
        DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)
    ]

    def grads(x: Tensor, y: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad(nn.functional.mse_loss(model(x), y), params))

    for step in range(steps):
        for sampler in samplers:
            sampler.set_epoch(step)
        halves = [(data.x[list(s)], data.y[list(s)]) for s in samplers]
        first = [grads(x, y) for x, y in halves]
        if not local:
            first = [[(a + b) / 2 for a, b in zip(*first, strict=True)]] * 2
        update = [torch.zeros_like(p) for p in params]
        for (x, y), g in zip(halves, first, strict=True):
            norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, t in zip(params, g, strict=True):
                    p.add_(t * (rho / (norm + 1e-12)))
            for u, t in zip(update, grads(x, y), strict=True):
                u.add_(t / 2)
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
        for p, u in zip(params, update, strict=True):
            p.grad = u
        sgd.step()
    return dict(model.named_parameters())


@pytest.mark.ddp
def test_ddp_local_perturbation_equals_independent_perturbations(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    # SAM returned unbound from the module's configure_optimizers: it binds itself on each rank
    sam = {"rho": 0.5, "perturbation": "local"}
    runs = fit_ddp(tmp_path / "ddp", trainer_kwargs, [], sam=sam, bind=False)
    expected = local_reference(STEPS, rho=0.5, local=True)
    global_sam = local_reference(STEPS, rho=0.5, local=False)
    assert max(float((expected[n] - global_sam[n]).abs().max()) for n in expected) > 1e-4
    for rank, run in enumerate(runs):
        for name, value in expected.items():
            torch.testing.assert_close(
                run["state"][name], value, atol=1e-5, rtol=1e-5, msg=f"rank {rank} {name}"
            )
        # the first backward stays on each rank: one all-reduce per step, as plain SGD
        assert run["allreduces"] == [True] * STEPS


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_refused(strategy: type) -> None:
    # these strategies need a GPU to build a Trainer; setup only reads the attributes below
    trainer = SimpleNamespace(
        strategy=strategy.__new__(strategy), precision_plugin=None, accumulate_grad_batches=1
    )
    with pytest.raises(MisconfigurationException, match=f"does not support {strategy.__name__}"):
        SharpnessAwareMinimization().setup(trainer, SmallNet(), "fit")  # type: ignore[arg-type]
