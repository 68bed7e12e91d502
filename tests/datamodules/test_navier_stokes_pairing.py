"""neuraloperator's separate train and test files: ``nsforcing_train_<res>.pt`` + ``nsforcing_test_<res>.pt``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_climate.datamodules import NavierStokesDataModule
from lightning_climate.datasets.navier_stokes_neuralop import paired_test_file
from lightning_climate.layers.constraints import block_mean


def write_nsforcing(path: Path, n: int, size: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """A file in neuraloperator's layout ``{"x", "y"}`` (N, s, s); returns ``y``."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randn(n, size, size, generator=generator) + shift
    torch.save({"x": torch.randn(n, size, size, generator=generator), "y": y}, path)
    return y


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """8 training and 3 test fields of 32²; the test fields lie far above the training ones."""
    train = write_nsforcing(tmp_path / "nsforcing_train_32.pt", 8, 32, seed=0)
    test = write_nsforcing(tmp_path / "nsforcing_test_32.pt", 3, 32, seed=1, shift=100.0)
    return tmp_path, train, test


def build(root: Path, **kwargs: object) -> NavierStokesDataModule:
    options = {"resolution": 16, "factor": 2, "test_factors": (1, 2, 4), "val_fraction": 0.25}
    return NavierStokesDataModule(root=root, **{**options, **kwargs})


@pytest.mark.parametrize("by", ["file", "folder"])
def test_test_split_is_exactly_the_test_file(
    pair: tuple[Path, torch.Tensor, torch.Tensor], by: str
) -> None:
    folder, train_y, test_y = pair
    dm = build(folder / "nsforcing_train_32.pt" if by == "file" else folder)
    assert dm.test_file == folder / "nsforcing_test_32.pt" and dm.test_fraction == 0
    dm.prepare_data()
    dm.setup("fit")
    train, val = dm.train_dataset.indices, dm.val_dataset.indices
    assert (len(train), len(val)) == (6, 2) and sorted(train + val) == list(range(8))
    loaders = dm.test_dataloader()
    assert dm.dataloader_names("test") == ["x1", "x2", "x4"]
    for factor, loader in zip((1, 2, 4), loaders, strict=True):
        batches = list(loader)
        index = torch.cat([b["index"] for b in batches])
        hr = torch.cat([b["hr"] for b in batches])
        assert index.tolist() == [8, 9, 10]  # after the 8 training-file samples
        expected = block_mean(test_y, 32 // (8 * factor))[:, None]
        torch.testing.assert_close(hr, expected)
    # train and val never contain a test field: all their values stay near the training data
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i in range(len(dataset)):
            assert dataset[i]["hr"].max() < 50
            torch.testing.assert_close(
                dataset[i]["hr"][0], block_mean(train_y[int(dataset[i]["index"])], 2)
            )
    stats = dm.train_statistics()  # from the training split only
    assert stats["hr_max"].item() == pytest.approx(block_mean(train_y[train], 2).max().item())
    again = build(folder / "nsforcing_train_32.pt")
    again.setup("fit")
    assert again.train_dataset.indices == train  # seeded by `seed`


def test_missing_paired_test_file_is_an_error(
    pair: tuple[Path, torch.Tensor, torch.Tensor],
) -> None:
    folder, _, _ = pair
    (folder / "nsforcing_test_32.pt").unlink()
    dm = build(folder / "nsforcing_train_32.pt")
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(
            FileNotFoundError,
            match=r"the test split of nsforcing_train_32\.pt is nsforcing_test_32\.pt, which is "
            r"not in .*Put it there .*nsforcing_128\.tgz.*point test_root at your copy, or set "
            r"test_fraction",
        ):
            step()
    split = build(folder / "nsforcing_train_32.pt", test_fraction=0.25)  # the explicit fallback
    split.setup("fit")
    assert split.test_file is None
    tests = split.test_dataset["x2"].indices
    assert len(tests) == 2 and set(tests).isdisjoint(split.train_dataset.indices)


def test_test_root_overrides_the_pairing(
    pair: tuple[Path, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    folder, _, _ = pair
    finer = write_nsforcing(tmp_path / "finer.pt", 2, 64, seed=2)  # e.g. the 1024 test of 128
    dm = build(folder / "nsforcing_train_32.pt", test_root=tmp_path / "finer.pt")
    dm.setup("test")
    assert [len(ds) for ds in dm.test_dataset.values()] == [2, 2, 2]
    sample = dm.test_dataset["x4"][1]
    assert int(sample["index"]) == 9
    torch.testing.assert_close(sample["hr"][0], block_mean(finer[1], 2))
    torch.testing.assert_close(sample["lr"][0], block_mean(finer[1], 8))
    missing = build(folder / "nsforcing_train_32.pt", test_root=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"test_root='.*nope\.pt' does not exist"):
        missing.setup("test")
    with pytest.raises(ValueError, match=r"test_root='.*finer\.pt' is the test split and "):
        build(folder, test_root=tmp_path / "finer.pt", test_fraction=0.2)


def test_folder_with_two_training_files_is_ambiguous(
    pair: tuple[Path, torch.Tensor, torch.Tensor],
) -> None:
    folder, _, _ = pair
    write_nsforcing(folder / "nsforcing_train_64.pt", 2, 64, seed=3)
    with pytest.raises(ValueError, match=r"holds several training files .*point `root` at the one"):
        build(folder)
    assert build(folder / "nsforcing_train_64.pt").test_file == folder / "nsforcing_test_64.pt"


@pytest.mark.parametrize(
    ("name", "paired"),
    [
        ("nsforcing_train_1024.pt", "nsforcing_test_1024.pt"),
        ("darcy_train_16.pth", "darcy_test_16.pth"),
        ("my_train_set_train_64.pt", "my_train_set_test_64.pt"),
        ("nsforcing_test_128.pt", None),
        ("ns_res64_n100_seed0.h5", None),
        ("nsforcing_train_x.pt", None),
    ],
)
def test_paired_test_file_names(name: str, paired: str | None) -> None:
    found = paired_test_file(Path("data") / name)
    assert found == (None if paired is None else Path("data") / paired)
