from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.datamodules import DigitsDataModule
from lightning_climate.models import TimmModel
from lightning_climate.tasks import ClassificationTask


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def test_timm_model_is_built_offline() -> None:
    task = ClassificationTask(TimmModel("resnet10t", num_classes=7, in_channels=3), num_classes=7)
    logits = task(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert task.model.model.default_cfg["architecture"] == "resnet10t"
    assert "model" not in task.hparams  # the module's weights are in the state dict
    with pytest.raises(ValueError, match=r"timm has no model 'resnet_nope'.*timm\.list_models"):
        TimmModel("resnet_nope")


def test_vit_with_model_kwargs() -> None:
    vit = {"img_size": 8, "patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2}
    task = ClassificationTask(TimmModel("vit_tiny_patch16_224", 10, 1, model_kwargs=vit))
    assert task(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"model_kwargs applies to a timm model name only"):
        ClassificationTask(tiny_cnn(), model_kwargs=vit)


@pytest.mark.parametrize(
    ("name", "model_kwargs"),
    [("test_resnet", None), ("vit_tiny_patch16_224", {"img_size": 8, "patch_size": 4, "depth": 1})],
)
def test_deprecated_model_name_warns_and_builds_the_timm_model(
    name: str, model_kwargs: dict[str, Any] | None
) -> None:
    torch.manual_seed(0)
    with pytest.warns(
        DeprecationWarning,
        match=rf"ClassificationTask\(model='{name}'\) is deprecated; pass a module.*class_path: TimmModel",
    ):
        deprecated = ClassificationTask(name, 10, 1, model_kwargs=model_kwargs)
    torch.manual_seed(0)
    module = ClassificationTask(TimmModel(name, 10, 1, model_kwargs=model_kwargs))
    expected = module.state_dict()
    assert list(deprecated.state_dict()) == list(expected)
    for key, value in deprecated.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(2, 1, 8, 8)
    deprecated.eval()
    module.eval()
    assert torch.equal(deprecated(x), module(x))


def test_training_step_loss_is_cross_entropy() -> None:
    torch.manual_seed(0)
    model = tiny_cnn()
    task = ClassificationTask(model, label_smoothing=0.1)
    batch = {
        "image": torch.randn(4, 1, 8, 8),
        "label": torch.tensor([0, 1, 2, 3]),
        "index": torch.arange(4),
    }
    loss = task.shared_step("val", batch)  # unfitted normaliser: the identity
    expected = nn.functional.cross_entropy(
        model(batch["image"]), batch["label"], label_smoothing=0.1
    )
    torch.testing.assert_close(loss, expected)
    # fitted, it standardises the images before the model
    task.normalizers["image"].fit(
        {"image_mean": torch.tensor([0.5]), "image_std": torch.tensor([2.0])}
    )
    expected = nn.functional.cross_entropy(
        model((batch["image"] - 0.5) / 2.0), batch["label"], label_smoothing=0.1
    )
    torch.testing.assert_close(task.shared_step("val", batch), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"loss": "mse"}, r"loss must be one of \['ce'\]"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClassificationTask(tiny_cnn(), **kwargs)


def test_fit_learns_digits_and_logs(trainer_kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(tiny_cnn(), optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    dm = DigitsDataModule(batch_size=64)
    trainer = Trainer(max_epochs=4, **trainer_kwargs)
    trainer.fit(task, dm)
    logged = trainer.logged_metrics
    for key in ("train_loss", "train_Accuracy", "val_loss", "val_Accuracy"):
        assert key in logged
    assert float(logged["val_Accuracy"]) > 0.8  # chance is 0.1
    # images are standardised with the training split's pixel statistics, read here per sample
    pixels = torch.stack([s["image"] for s in dm.train_dataset]).double()
    normalizer = task.normalizers["image"]
    torch.testing.assert_close(
        normalizer.shift, pixels.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        normalizer.scale, pixels.std((0, 2, 3), unbiased=False).float(), rtol=1e-3, atol=0
    )
    (result,) = trainer.test(task, dm)
    assert set(result) == {"test_loss", "test_Accuracy"}
    preds = trainer.predict(task, dm)
    probs = torch.cat([p["probs"] for p in preds])
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    index = torch.cat([p["index"] for p in preds])
    assert sorted(index.tolist()) == sorted(dm.split_indices()["test"].tolist())


def test_checkpoint_reloads_with_same_predictions(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    task = ClassificationTask(TimmModel("test_resnet", num_classes=10, in_channels=1))
    trainer = Trainer(max_steps=2, limit_val_batches=1, **trainer_kwargs)
    dm = DigitsDataModule(batch_size=32, image_size=16)
    trainer.fit(task, dm)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    # the model is a module: the checkpoint holds its weights, the caller its configuration
    reloaded = ClassificationTask.load_from_checkpoint(path, model=TimmModel("test_resnet", 10, 1))
    stats = dm.train_statistics()
    assert torch.equal(reloaded.normalizers["image"].shift, stats["image_mean"].float())
    assert torch.equal(reloaded.normalizers["image"].scale, stats["image_std"].float())
    x = torch.rand(2, 1, 16, 16)  # pixels in [0, 1], the data's units
    task.eval()
    reloaded.eval()
    torch.testing.assert_close(task(x), reloaded(x))


def test_checkpoint_of_a_deprecated_model_name_reloads_without_arguments(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.warns(DeprecationWarning):
        task = ClassificationTask("test_resnet", num_classes=10, in_channels=1)
    trainer = Trainer(max_steps=1, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(task, DigitsDataModule(batch_size=32, image_size=16))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    with pytest.warns(DeprecationWarning):
        reloaded = ClassificationTask.load_from_checkpoint(path)
    x = torch.rand(2, 1, 16, 16)
    task.eval()
    reloaded.eval()
    torch.testing.assert_close(task(x), reloaded(x))


class CheckMetricCounts(Callback):
    """Asserts that train metrics saw each training sample once although SAM runs two passes."""

    def __init__(self) -> None:
        self.seen = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seen += len(batch["label"])
        (acc,) = pl_module.stage_metrics("train").values()
        assert int(acc.tp + acc.fn) == self.seen


def test_sam_updates_train_metrics_from_first_pass_only(trainer_kwargs: dict[str, Any]) -> None:
    task = ClassificationTask(tiny_cnn(), optimizer=torch.optim.SGD)
    check = CheckMetricCounts()
    trainer = Trainer(
        max_steps=3,
        limit_val_batches=0,
        callbacks=[SharpnessAwareMinimization(), check],
        **trainer_kwargs,
    )
    trainer.fit(task, DigitsDataModule(batch_size=32))
    assert check.seen == 96
