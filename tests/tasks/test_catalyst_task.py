from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import EXAMPLES, OC20_SAMPLE, RunCLI
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader
from torch_geometric.loader.dataloader import Collater

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.datasets import generate_oc20
from lightning_climate.datasets.oc20 import entry_to_data, read_npz_batch
from lightning_climate.models import CatalystModel, PhysEmbedding
from lightning_climate.models.pooling import PoolingEnergyHead
from lightning_climate.tasks import CatalystTask

SMALL = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 12}


def small_task(
    task: str = "is2re", model: dict[str, Any] | None = None, **kwargs: Any
) -> CatalystTask:
    """A CatalystTask around a small CatalystModel (``model`` adds model arguments)."""
    return CatalystTask(CatalystModel(**SMALL, **(model or {})), task=task, **kwargs)


def training_mean_std(dm: OC20DataModule, key: str) -> tuple[float, float]:
    """Mean and std of a target over the training split, read sample by sample."""
    values = torch.tensor([float(getattr(s, key)) for s in dm.train_dataset], dtype=torch.float64)
    return float(values.mean()), float(values.std())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oc20task")
    generate_oc20(path, num_systems=12, seed=2, size=(2, 2, 2), steps=20, progress=False)
    return path


def test_validation_metrics_equal_a_direct_computation(
    root: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    dm = OC20DataModule(root=str(root), batch_size=3)
    task = small_task()
    assert not bool(task.normalizer.fitted)  # identity until fit
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, enable_checkpointing=False, **trainer_kwargs
    )
    trainer.fit(task, dm)
    # the normaliser holds the statistics of the training split, read here sample by sample
    mean, std = training_mean_std(dm, "y_relaxed")
    assert bool(task.normalizer.fitted)
    assert task.normalizer.shift.item() == pytest.approx(mean, abs=1e-6)
    assert task.normalizer.scale.item() == pytest.approx(std, abs=1e-6)
    (results, *_) = trainer.validate(task, dm)
    task.eval()
    errors = []
    with torch.no_grad():
        for sample in dm.val_dataset["id"]:
            batch = Collater(None)([sample])
            errors.append((task(batch)["energy"] - batch.y_relaxed).abs().item())
            # forward: the model's normalised energy mapped back to eV
            expected = task.model(batch)["energy"] * std + mean
            torch.testing.assert_close(task(batch)["energy"], expected.float())
    assert results["val_id_energy_mae"] == pytest.approx(sum(errors) / len(errors), abs=1e-5)
    assert results["val_id_energy_ewt"] == pytest.approx(
        sum(e < 0.02 for e in errors) / len(errors)
    )
    assert {"val_id_loss", "val_loss"} <= set(results)


def test_checkpoint_carries_target_statistics(
    root: Path, trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    dm = OC20DataModule(root=str(root), batch_size=4)
    task = small_task()
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, **trainer_kwargs)
    trainer.fit(task, dm)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    # the task's hparams leave the model out: the checkpoint holds its weights
    loaded = CatalystTask.load_from_checkpoint(path, model=CatalystModel(**SMALL))
    mean, std = training_mean_std(dm, "y_relaxed")
    assert bool(loaded.normalizer.fitted)
    assert loaded.normalizer.shift.item() == pytest.approx(mean, abs=1e-6)
    assert loaded.normalizer.scale.item() == pytest.approx(std, abs=1e-6)
    saved = torch.load(path, weights_only=True)["OC20DataModule"]["train_statistics"]
    assert saved["y_relaxed_mean"].item() == pytest.approx(mean, abs=1e-6)
    batch = next(iter(dm.val_dataloader()[0]))
    task.eval()
    loaded.eval()
    assert torch.allclose(task(batch)["energy"], loaded(batch)["energy"])
    # the restored statistics are kept at the next fit (a datamodule with others is ignored)
    other = OC20DataModule(root=str(root), batch_size=4, target_mean=5.0, target_std=3.0)
    loaded.train()
    Trainer(fast_dev_run=1, **trainer_kwargs).fit(loaded, other)
    assert loaded.normalizer.shift.item() == pytest.approx(mean, abs=1e-6)
    predictions = trainer.predict(task, dm)
    indices = torch.cat([p["index"] for loader in predictions for p in loader])
    assert sorted(indices.tolist()) == sorted(
        i for k, v in dm.split_indices.items() if k.startswith("test") for i in v
    )


def test_without_statistics_energies_stay_unnormalised_with_a_warning(
    trainer_kwargs: dict[str, Any],
) -> None:
    torch.manual_seed(0)
    task = small_task(optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    with pytest.warns(
        UserWarning, match=r"without statistics .*\['y_relaxed'\] are used unnormalised"
    ):
        Trainer(max_steps=1, limit_val_batches=0, **trainer_kwargs).fit(task, _sample_loader())
    assert not bool(task.normalizer.fitted)
    batch = next(iter(_sample_loader(batch_size=3)))
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(task(batch)["energy"], task.model(batch)["energy"])


def test_s2ef_with_gradient_forces(root: Path, trainer_kwargs: dict[str, Any]) -> None:
    dm = OC20DataModule(root=str(root), task="s2ef", batch_size=8)
    task = small_task("s2ef", {"force_head": "gradient"})
    trainer = Trainer(
        fast_dev_run=1,
        inference_mode=False,
        **{**trainer_kwargs, "default_root_dir": trainer_kwargs["default_root_dir"]},
    )
    trainer.fit(task, dm)
    metrics = trainer.callback_metrics
    assert {"val_id_force_mae", "val_id_force_cos", "val_id_efwt"} <= set(metrics)
    assert 0 < float(metrics["val_id_force_mae"]) < 10
    # the energy normaliser of S2EF reads the statistics of `energy`
    mean, std = training_mean_std(dm, "energy")
    assert task.normalizer.key == "energy"
    assert task.normalizer.shift.item() == pytest.approx(mean, rel=1e-6)
    assert task.normalizer.scale.item() == pytest.approx(std, rel=1e-6)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        Trainer(fast_dev_run=1, **trainer_kwargs).validate(task, dm)


@pytest.mark.parametrize("force_head", ["direct", "mixed"])
def test_s2ef_direct_and_mixed_heads_train(
    root: Path, trainer_kwargs: dict[str, Any], force_head: str
) -> None:
    dm = OC20DataModule(root=str(root), task="s2ef", batch_size=8)
    task = small_task("s2ef", {"force_head": force_head})
    trainer = Trainer(fast_dev_run=1, inference_mode=False, **trainer_kwargs)
    trainer.fit(task, dm)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_bad_arguments() -> None:
    for model in (CatalystModel(**SMALL), nn.Linear(2, 1)):
        with pytest.raises(
            ValueError, match=r"S2EF predicts forces: give the model a force head .*force_head="
        ):
            CatalystTask(model, task="s2ef")
    with pytest.raises(ValueError, match="task must be"):
        CatalystTask(CatalystModel(**SMALL), task="is2rs")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes its model as a torch\.nn\.Module"):
        CatalystTask("schnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_std must be positive"):
        OC20DataModule(target_std=0.0)
    for weight in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="pool_loss_weight must be >= 0"):
            small_task(model={"energy_head": "pooling"}, pool_loss_weight=weight)
    with pytest.raises(ValueError, match="pool_clusters must be an integer >= 1"):
        CatalystModel(energy_head="pooling", pool_clusters=0)
    with pytest.raises(ValueError, match=r"pool_mixing .* must be in \[0, 1\]"):
        CatalystModel(energy_head="pooling", pool_mixing=2.0)
    with pytest.raises(ValueError, match="argument energy_head"):
        CatalystModel(energy_head="graclus")  # type: ignore[arg-type]


_AUX = ("aux_loss", "pool_mincut", "pool_mincut_ho", "pool_ortho")


def test_pooling_head_adds_and_logs_its_aux_loss(
    root: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    dm = OC20DataModule(root=str(root), batch_size=3)
    task = small_task(
        model={"energy_head": "pooling", "pool_clusters": 3, "pool_mixing": 0.25},
        pool_loss_weight=0.5,
    )
    before = [p.detach().clone() for p in task.model.energy.assign.parameters()]
    trainer = Trainer(
        max_epochs=2, limit_train_batches=2, enable_checkpointing=False, **trainer_kwargs
    )
    trainer.fit(task, dm)
    logged = set(trainer.callback_metrics)
    assert {f"{stage}_{key}" for stage in ("train", "val_id") for key in _AUX} <= logged
    assert all(
        not torch.equal(a, b)
        for a, b in zip(before, task.model.energy.assign.parameters(), strict=True)
    )
    (results, *_) = trainer.validate(task, dm)
    # the epoch values are graph-weighted means, so the loss identities hold for them too
    aux = results["val_id_aux_loss"]
    mix = 0.25 * results["val_id_pool_mincut"] + 0.75 * results["val_id_pool_mincut_ho"]
    assert aux == pytest.approx(mix + results["val_id_pool_ortho"], abs=1e-5)
    energy_loss = results["val_id_energy_mae"] / task.normalizer.scale.item()
    assert results["val_id_loss"] == pytest.approx(energy_loss + 0.5 * aux, abs=1e-5)
    # other heads log no aux loss and their loss is the energy L1 alone
    plain = small_task()
    (plain_results, *_) = Trainer(
        max_epochs=1, limit_train_batches=1, enable_checkpointing=False, **trainer_kwargs
    ).validate(plain, dm)
    assert not any(key.endswith(_AUX) for key in plain_results)
    assert plain_results["val_id_loss"] == pytest.approx(
        plain_results["val_id_energy_mae"] / plain.normalizer.scale.item(), abs=1e-5
    )


def _sample_loader(batch_size: int = 1) -> DataLoader:
    graphs = [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(OC20_SAMPLE))]
    graphs.append(graphs[2].clone())  # 4 graphs: 2 per rank, no padding by the sampler
    graphs[3].index = torch.tensor([3])
    return DataLoader(graphs, batch_size=batch_size, collate_fn=Collater(None))


@pytest.mark.ddp
def test_ddp_validation_equals_single_process(trainer_kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    task = small_task()
    single = Trainer(devices=1, **trainer_kwargs)
    expected = single.validate(task, _sample_loader())[0]
    ddp = Trainer(devices=2, strategy="ddp_spawn", **trainer_kwargs)
    ddp.validate(task, _sample_loader())
    got = {k: float(v) for k, v in ddp.callback_metrics.items()}
    for key in ("val_energy_mae", "val_energy_ewt"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5)
    assert expected["val_energy_mae"] > 0


@pytest.mark.ddp
def test_ddp_pooling_head_trains_and_validates_as_one_process(
    trainer_kwargs: dict[str, Any],
) -> None:
    # per-graph averaging of the aux loss: 2 ranks x 1 graph average to the gradient of one
    # process on both graphs; SGD so that the comparison is linear in the gradients (a small
    # rate: larger ones blow this untrained model up, whatever the head)
    torch.manual_seed(0)
    sgd = functools.partial(torch.optim.SGD, lr=1e-3)
    single = small_task(model={"energy_head": "pooling"}, optimizer=sgd)
    ddp_task = copy.deepcopy(single)
    initial = copy.deepcopy(single.state_dict())
    fit = {**trainer_kwargs, "max_steps": 2, "limit_val_batches": 0}
    Trainer(devices=1, **fit).fit(single, _sample_loader(batch_size=2))
    # plain DDP (find_unused_parameters=False): every parameter must take part
    Trainer(devices=2, strategy="ddp_spawn", **fit).fit(ddp_task, _sample_loader())
    for name, value in single.state_dict().items():
        torch.testing.assert_close(
            ddp_task.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name
        )
    moved = (
        initial["model.energy.assign.0.weight"] - ddp_task.model.energy.assign[0].weight.detach()
    )
    assert float(moved.abs().max()) > 2e-5  # the weights came back from the workers, trained
    expected = Trainer(devices=1, **trainer_kwargs).validate(single, _sample_loader())[0]
    ddp = Trainer(devices=2, strategy="ddp_spawn", **trainer_kwargs)
    ddp.validate(single, _sample_loader())
    got = {k: float(v) for k, v in ddp.callback_metrics.items()}
    for key in ("val_energy_mae", "val_aux_loss", "val_pool_mincut", "val_pool_ortho"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key


def _is_phast_weighted_final(model: CatalystModel) -> bool:
    phast = any(isinstance(m, PhysEmbedding) for m in model.modules())
    return phast and getattr(model.energy, "kind", None) == "weighted_final"


@pytest.mark.parametrize(
    ("name", "task_kind", "check"),
    [
        ("oc20_is2re", "is2re", lambda m: m.force_head == "none"),
        ("oc20_is2re_phast", "is2re", _is_phast_weighted_final),
        (
            "oc20_is2re_phast_pooling",
            "is2re",
            lambda m: isinstance(m.energy, PoolingEnergyHead) and m.energy.clusters == 4,
        ),
        ("oc20_adsorbate_catalyst", "is2re", lambda m: m.ads_cat == "attention"),
        ("oc20_s2ef", "s2ef", lambda m: m.force_head == "gradient"),
    ],
)
def test_examples_run(
    root: Path,
    run_cli: RunCLI,
    name: str,
    task_kind: str,
    check: Callable[[CatalystModel], bool],
) -> None:
    run = run_cli(
        "fit",
        EXAMPLES / f"{name}.yaml",
        "--trainer.fast_dev_run",
        "1",
        "--model.init_args.model.init_args.hidden_channels",
        "16",
        root=str(root),
        tiny=False,
    )
    task, loss = run["task"], run["metrics"]["train_loss"]
    assert task.hparams["task"] == task_kind
    assert isinstance(task.model, CatalystModel) and check(task.model)
    # the energy statistics come from the generated training split, not OC20's constants
    dm = task.trainer.datamodule
    mean, _ = training_mean_std(dm, task.normalizer.key)
    assert task.normalizer.shift.item() == pytest.approx(mean, rel=1e-5)
    assert task.normalizer.shift.item() != pytest.approx(-1.525913953781128)
    assert math.isfinite(loss) and loss > 0  # finite and positive L1 loss


def test_frame_averaged_model_trains_and_evaluates_all_frames(
    root: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    dm = OC20DataModule(root=str(root), batch_size=4)
    task = small_task(model={"frame_averaging": "3D", "fa_se3": True})
    Trainer(fast_dev_run=1, **trainer_kwargs).fit(task, dm)
    batch = next(iter(dm.val_dataloader()[0]))
    task.eval()
    with torch.no_grad():
        first, second = task(batch)["energy"], task(batch)["energy"]
    assert torch.equal(first, second)  # all frames in evaluation: deterministic
    task.train()
    with torch.no_grad():
        draws = {tuple(task(batch)["energy"].tolist()) for _ in range(4)}
    assert len(draws) > 1  # one random frame per graph in training
