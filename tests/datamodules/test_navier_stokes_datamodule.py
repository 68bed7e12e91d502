from pathlib import Path

import pytest
import torch

from lightning_climate.datamodules import NavierStokesDataModule
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.layers.constraints import block_mean


@pytest.fixture
def datamodule(navier_stokes_file: Path) -> NavierStokesDataModule:
    dm = NavierStokesDataModule(
        path=navier_stokes_file,
        resolution=16,
        factor=2,
        test_factors=[1, 2, 4],
        batch_size=4,
        val_fraction=0.25,
        test_fraction=0.25,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_splits_by_trajectory(datamodule: NavierStokesDataModule) -> None:
    steps = 4
    traj = {
        name: {int(i) // steps for i in ds.indices}
        for name, ds in (
            ("train", datamodule.train_dataset),
            ("val", datamodule.val_dataset),
            ("test", datamodule.test_dataset["x2"]),
        )
    }
    assert len(traj["train"]) == 4 and len(traj["val"]) == 2 and len(traj["test"]) == 2
    assert (
        not traj["train"] & traj["val"]
        and not traj["train"] & traj["test"]
        and not traj["val"] & traj["test"]
    )
    again = NavierStokesDataModule(
        path=datamodule.path, resolution=16, val_fraction=0.25, test_fraction=0.25
    )
    again.setup("fit")
    assert again.train_dataset.indices == datamodule.train_dataset.indices  # same seed, same split


def test_samples_are_block_means_of_the_file(
    datamodule: NavierStokesDataModule, navier_stokes_file: Path
) -> None:
    sample = datamodule.train_dataset[5]
    index = int(sample["index"])
    stored = NavierStokesTrajectories(navier_stokes_file)[index // 4][index % 4]
    assert sample["hr"].shape == (1, 16, 16) and sample["lr"].shape == (1, 8, 8)
    assert torch.allclose(sample["hr"][0], block_mean(stored, 2))
    assert torch.allclose(sample["lr"], block_mean(sample["hr"], 2), atol=1e-6)


def test_test_sets_share_the_input(datamodule: NavierStokesDataModule) -> None:
    assert datamodule.dataloader_names("test") == ["x1", "x2", "x4"]
    shapes = {
        k: (ds[0]["lr"].shape, ds[0]["hr"].shape) for k, ds in datamodule.test_dataset.items()
    }
    assert shapes == {
        "x1": ((1, 8, 8), (1, 8, 8)),
        "x2": ((1, 8, 8), (1, 16, 16)),
        "x4": ((1, 8, 8), (1, 32, 32)),
    }
    lrs = [ds[1]["lr"] for ds in datamodule.test_dataset.values()]
    assert all(torch.allclose(lrs[0], lr, atol=1e-6) for lr in lrs)
    loaders = datamodule.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 3


def test_train_statistics_from_train_split_only(
    datamodule: NavierStokesDataModule, navier_stokes_file: Path
) -> None:
    stats = datamodule.train_statistics()
    reader = NavierStokesTrajectories(navier_stokes_file)
    train_traj = sorted({int(i) // 4 for i in datamodule.train_dataset.indices})
    fields = torch.stack([block_mean(reader[t], 2) for t in train_traj])
    assert stats["min"].item() == pytest.approx(fields.min().item())
    assert stats["max"].item() == pytest.approx(fields.max().item())


def test_bad_arguments(tmp_path: Path, navier_stokes_file: Path) -> None:
    with pytest.raises(ValueError, match="must be a positive integer dividing resolution"):
        NavierStokesDataModule(resolution=30, factor=4)
    with pytest.raises(ValueError, match="test_factors must be positive integers"):
        NavierStokesDataModule(test_factors=[1.5])
    with pytest.raises(FileNotFoundError, match="does not exist; fix `path`"):
        NavierStokesDataModule(path=tmp_path / "missing.h5").prepare_data()
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        NavierStokesDataModule(data_dir=tmp_path).setup("fit")
    dm = NavierStokesDataModule(path=navier_stokes_file, resolution=24, factor=2, test_factors=[2])
    with pytest.raises(ValueError, match="cannot be block-averaged to the 24x24 grid"):
        dm.setup("fit")
    dm = NavierStokesDataModule(
        path=navier_stokes_file, resolution=16, val_fraction=0.01, test_fraction=0.01
    )
    with pytest.raises(ValueError, match="too few"):
        dm.setup("fit")


def test_prepare_data_generates_once(tmp_path: Path) -> None:
    dm = NavierStokesDataModule(
        data_dir=tmp_path,
        num_trajectories=2,
        file_resolution=16,
        resolution=8,
        t_final=0.2,
        record_steps=2,
        dt=0.05,
    )
    dm.prepare_data()
    path = dm.file_path
    assert path.exists() and path.parent == tmp_path
    stamp = path.stat().st_mtime_ns
    dm.prepare_data()
    assert path.stat().st_mtime_ns == stamp
