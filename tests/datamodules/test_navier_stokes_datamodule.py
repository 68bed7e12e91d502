from pathlib import Path

import pytest
import torch

from lightning_climate.datamodules import NavierStokesDataModule
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.layers.constraints import block_mean


@pytest.fixture
def datamodule(navier_stokes_file: Path) -> NavierStokesDataModule:
    dm = NavierStokesDataModule(
        root=navier_stokes_file,
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
        root=datamodule.root, resolution=16, val_fraction=0.25, test_fraction=0.25
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
    assert set(stats) == {"hr_min", "hr_max"} and stats["hr_min"].shape == (1,)
    assert stats["hr_min"].item() == pytest.approx(fields.min().item())
    assert stats["hr_max"].item() == pytest.approx(fields.max().item())
    everything = torch.stack([block_mean(reader[t], 2) for t in range(reader.num_trajectories)])
    assert (everything.min().item(), everything.max().item()) != (
        stats["hr_min"].item(),
        stats["hr_max"].item(),
    )
    # batches are the physical vorticity, not scaled to the training range
    batch = next(iter(datamodule.val_dataloader()))
    assert float(batch["hr"].min()) < 0 < float(batch["hr"].max())
    stored = reader[int(batch["index"][0]) // 4][int(batch["index"][0]) % 4]
    torch.testing.assert_close(batch["hr"][0, 0], block_mean(stored, 2))


def test_bad_arguments(tmp_path: Path, navier_stokes_file: Path) -> None:
    with pytest.raises(ValueError, match="must be a positive integer dividing resolution"):
        NavierStokesDataModule(resolution=30, factor=4)
    with pytest.raises(ValueError, match="test_factors must be positive integers"):
        NavierStokesDataModule(test_factors=[1.5])
    dm = NavierStokesDataModule(root=navier_stokes_file, resolution=24, factor=2, test_factors=[2])
    with pytest.raises(ValueError, match="cannot be block-averaged to the grid of the resolution"):
        dm.setup("fit")
    dm = NavierStokesDataModule(
        root=navier_stokes_file, resolution=16, val_fraction=0.01, test_fraction=0.01
    )
    with pytest.raises(ValueError, match="too few"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_trajectories": -5}, r"num_trajectories must be a positive integer, got -5"),
        ({"dt": 0}, r"dt must be a positive finite number, got 0"),
        ({"resolution": 0}, r"resolution must be a positive integer, got 0"),
        (
            {"file_resolution": 32},
            r"file_resolution=32 holds 32x32 .* test factor 4 \(64x64\).*test_factors=\[1, 2\]",
        ),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1"),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NavierStokesDataModule(**kwargs)


def test_a_data_file_root_skips_the_generator_grid_check(navier_stokes_file: Path) -> None:
    # file_resolution describes generated files only; a file root is checked against its own grid
    dm = NavierStokesDataModule(root=navier_stokes_file, resolution=16, file_resolution=7)
    assert dm.is_file and dm.file_path == navier_stokes_file


def test_missing_data_without_generate_names_root_and_the_fix(tmp_path: Path) -> None:
    folder = NavierStokesDataModule(root=tmp_path / "ns")
    assert not folder.generate  # generation is opt-in
    for call in (folder.prepare_data, lambda: folder.setup("fit")):
        with pytest.raises(FileNotFoundError, match=r"no Navier–Stokes data file at .*ns/ns_res64"):
            call()
    with pytest.raises(FileNotFoundError, match=r"Point `root` at your copy, or set generate=True"):
        folder.prepare_data()
    assert not (tmp_path / "ns").exists()
    missing = NavierStokesDataModule(root=tmp_path / "missing.h5", generate=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.h5\. Point `root`"):
        missing.prepare_data()  # a named file is never generated


def test_deprecated_aliases_warn_and_work(navier_stokes_file: Path, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"path=\.\.\.\) is deprecated.*use root="):
        by_path = NavierStokesDataModule(
            path=navier_stokes_file, resolution=16, val_fraction=0.25, test_fraction=0.25
        )
    assert by_path.root == navier_stokes_file and by_path.is_file
    by_path.setup("fit")
    by_root = NavierStokesDataModule(
        root=navier_stokes_file, resolution=16, val_fraction=0.25, test_fraction=0.25
    )
    torch.testing.assert_close(by_path.train_statistics(), by_root.train_statistics())
    with pytest.warns(DeprecationWarning, match=r"data_dir=\.\.\.\) is deprecated.*use root="):
        by_dir = NavierStokesDataModule(data_dir=tmp_path)
    assert by_dir.root == tmp_path and by_dir.file_path.parent == tmp_path


def test_prepare_data_generates_once(tmp_path: Path) -> None:
    dm = NavierStokesDataModule(
        root=tmp_path,
        generate=True,
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
