from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_climate.datamodules import CIFARDataModule
from lightning_climate.datamodules.cifar import random_crop_flip
from lightning_climate.datasets.cifar import read_cifar, write_cifar


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar(tmp_path, 10, "binary", n_train=200, n_test=40, seed=0)
    return tmp_path


def test_splits_indices_scaling_and_train_statistics(cifar_root: Path) -> None:
    dm = CIFARDataModule(cifar_root, batch_size=16, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.train_dataset) == 150 and len(dm.val_dataset) == 50
    train_idx = set(dm.train_dataset.indices.tolist())
    assert train_idx.isdisjoint(dm.val_dataset.indices.tolist())
    assert dm.test_dataset.indices.min() == 50_000
    images, labels = read_cifar(cifar_root, 10, "train")
    sample = dm.val_dataset[3]
    i = int(sample["index"])
    # samples are pixels scaled to [0, 1], never standardised
    torch.testing.assert_close(sample["image"], images[i].float() / 255)
    assert int(sample["label"]) == int(labels[i])
    # statistics are those of the training split's scaled pixels, per channel
    train = torch.stack([dm.train_dataset[k]["image"] for k in range(len(dm.train_dataset))])
    stats = dm.train_statistics()
    assert set(stats) == {"image_mean", "image_std"}
    torch.testing.assert_close(stats["image_mean"], train.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stats["image_std"], train.std(dim=(0, 2, 3)))
    standardised = (train - stats["image_mean"].view(3, 1, 1)) / stats["image_std"].view(3, 1, 1)
    torch.testing.assert_close(standardised.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    val = torch.stack([dm.val_dataset[k]["image"] for k in range(len(dm.val_dataset))])
    assert not torch.allclose(val.mean(dim=(0, 2, 3)), stats["image_mean"], atol=1e-6, rtol=0)


def test_crop_flip_keeps_content() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for b in range(2):
        # every output value is padding (0) or a pixel of the same image and channel
        for c in range(3):
            values = set(out[b, c].flatten().tolist()) - {0.0}
            assert values <= set(x[b, c].flatten().tolist())
    zero = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(zero[b], x[b]) or torch.equal(zero[b], x[b].flip(-1))


def test_missing_root_names_the_fix(tmp_path: Path) -> None:
    dm = CIFARDataModule(tmp_path / "nowhere", variant=100)
    with pytest.raises(FileNotFoundError, match="cifar-100-binary"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"variant": 20}, "variant must be 10 or 100"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CIFARDataModule(**kwargs)
