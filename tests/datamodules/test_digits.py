from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_climate.datamodules import DigitsDataModule


def test_splits_are_stratified_disjoint_and_complete() -> None:
    dm = DigitsDataModule(seed=3)
    splits = dm.split_indices()
    all_idx = np.concatenate(list(splits.values()))
    assert len(all_idx) == 1797
    assert len(np.unique(all_idx)) == 1797
    labels = load_digits().target
    counts = np.bincount(labels, minlength=10)
    for name, frac in [("val", 0.2), ("test", 0.2), ("train", 0.6)]:
        per_class = np.bincount(labels[splits[name]], minlength=10)
        # stratified: each class share within one image of its proportional share
        assert np.all(np.abs(per_class - frac * counts) <= 1.5), name


def test_split_is_seeded() -> None:
    a = DigitsDataModule(seed=0).split_indices()["train"]
    b = DigitsDataModule(seed=0).split_indices()["train"]
    c = DigitsDataModule(seed=1).split_indices()["train"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_samples_and_train_statistics() -> None:
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    sample = dm.train_dataset[0]
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].shape == (1, 8, 8) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
    raw = load_digits()
    i = int(sample["index"])
    # samples are pixel counts scaled to [0, 1], never standardised
    torch.testing.assert_close(sample["image"][0], torch.as_tensor(raw.images[i]).float() / 16)
    assert int(sample["label"]) == raw.target[i]
    train = torch.stack([dm.train_dataset[k]["image"] for k in range(len(dm.train_dataset))])
    stats = dm.train_statistics()
    # statistics come from the training split: standardising with them is exact there
    standardised = (train - stats["image_mean"]) / stats["image_std"]
    assert abs(float(standardised.mean())) < 1e-5
    assert abs(float(standardised.std()) - 1) < 1e-3
    everything = torch.as_tensor(raw.images).float() / 16
    assert abs(float(everything.mean() - stats["image_mean"])) > 1e-6
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 8, 8)
    saved = dm.state_dict()
    assert set(saved) == {"train_statistics"}
    assert set(saved["train_statistics"]) == {"image_mean", "image_std"}
    torch.testing.assert_close(saved["train_statistics"]["image_std"], stats["image_std"])


def test_image_size_resizes() -> None:
    dm = DigitsDataModule(image_size=16)
    dm.setup("test")
    assert dm.test_dataset[0]["image"].shape == (1, 16, 16)
    assert len(dm.test_dataset) + len(dm.val_dataset) + len(dm.train_dataset) == 1797


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum below 1"),
        ({"image_size": 0}, "image_size must be a positive"),
        ({"batch_size": 0}, "batch_size must be a positive"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
