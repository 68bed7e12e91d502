"""neuraloperator's ``nsforcing_{train,test}_{res}.pt`` files through the reader and the datamodule."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lightning_climate.datamodules import NavierStokesDataModule
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.datasets.navier_stokes_neuralop import load_neuralop_pt
from lightning_climate.layers.constraints import block_mean


def write_nsforcing(path: Path, n: int = 6, size: int = 16, legacy: bool = False) -> dict:
    """A file in neuraloperator's layout: ``{"x": (N, s, s), "y": (N, s, s)}`` float32."""
    generator = torch.Generator().manual_seed(n * size)
    data = {
        "x": torch.randn(n, size, size, generator=generator),
        "y": torch.randn(n, size, size, generator=generator),
    }
    torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    return data


@pytest.mark.parametrize("legacy", [False, True])
def test_reader_reads_y_as_one_step_trajectories(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "nsforcing_train_16.pt"
    data = write_nsforcing(path, legacy=legacy)
    reader = NavierStokesTrajectories(path)
    assert reader.format == "neuralop-pt" and reader.times is None
    assert (len(reader), reader.num_steps, reader.resolution) == (6, 1, 16)
    for i in range(6):
        assert reader[i].dtype == torch.float32
        assert torch.equal(reader[i], data["y"][i][None])
    clone = pickle.loads(pickle.dumps(reader))  # DataLoader workers reload the file
    assert torch.equal(clone[5], data["y"][5][None])
    with pytest.raises(KeyError, match=r"no initial conditions: its `x` is the forcing input"):
        reader.initial_condition(0)
    loaded = load_neuralop_pt(path)
    assert torch.equal(loaded["x"], data["x"])


def test_returned_samples_do_not_alias_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nsforcing_test_16.pt"
    data = write_nsforcing(path)
    reader = NavierStokesTrajectories(path)
    reader[2].fill_(7.0)  # a transform writing in place must not change later reads
    assert torch.equal(reader[2], data["y"][2][None])


class _TouchOnLoad:
    """Unpickling this object would create ``marker``: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_file_needing_full_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "nsforcing_train_16.pt"
    marker = tmp_path / "code_was_executed"
    torch.save(
        {"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, 4, 4), "m": _TouchOnLoad(marker)}, path
    )
    with pytest.raises(
        ValueError, match=r"nsforcing_train_16\.pt can only be loaded with full pickle"
    ):
        NavierStokesTrajectories(path)
    assert not marker.exists()


def test_corrupt_and_truncated_files_name_the_fix(tmp_path: Path) -> None:
    full = tmp_path / "full.pt"
    write_nsforcing(full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    for path in (cut, garbage):
        with pytest.raises(ValueError, match=rf"{path.name} could not be read.*Download it again"):
            NavierStokesTrajectories(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"a": torch.zeros(2, 4, 4)}, r"found \['a'\]"),
        ([torch.zeros(2, 4, 4)], "found list"),
        ({"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, 4)}, r"`y` .* got \(2, 4\)"),
        ({"x": torch.zeros(3, 4, 4), "y": torch.zeros(2, 4, 4)}, "must have the same shape"),
        ({"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, 4, 4, dtype=torch.int64)}, "floating"),
    ],
)
def test_other_layouts_are_refused(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        NavierStokesTrajectories(path)


def test_datamodule_downscales_y_of_a_neuralop_file(tmp_path: Path) -> None:
    path = tmp_path / "nsforcing_train_32.pt"
    data = write_nsforcing(path, n=8, size=32)
    dm = NavierStokesDataModule(
        path=path, resolution=16, factor=2, test_factors=[1, 2, 4], batch_size=2,
        val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    splits = [set(ds.indices) for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset["x2"])]
    assert [len(s) for s in splits] == [4, 2, 2] and set.union(*splits) == set(range(8))
    sample = dm.train_dataset[1]
    index = int(sample["index"])
    assert torch.allclose(sample["hr"][0], block_mean(data["y"][index], 2))
    assert torch.allclose(sample["lr"][0], block_mean(data["y"][index], 4), atol=1e-6)
    assert dm.test_dataset["x4"][0]["hr"].shape == (1, 32, 32)
