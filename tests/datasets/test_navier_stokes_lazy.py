"""The Navier-Stokes reader reads one snapshot without the rest of its trajectory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_climate.datamodules import NavierStokesDataModule
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.layers.constraints import block_mean

FIXTURES = Path(__file__).parents[1] / "data" / "navier_stokes"


@pytest.mark.parametrize("name", ["ns_tiny.h5", "ns_tiny_v73.mat", "ns_tiny_v5.mat"])
def test_snapshot_equals_the_record_of_the_whole_trajectory(name: str) -> None:
    reader = NavierStokesTrajectories(FIXTURES / name)
    for index in range(len(reader)):
        whole = reader[index]
        for step in range(reader.num_steps):
            field = reader.snapshot(index, step)
            assert field.shape == (reader.resolution, reader.resolution)
            assert field.dtype == torch.float32 and field.is_contiguous()
            assert torch.equal(field, whole[step])
    assert torch.equal(reader.snapshot(-1, -1), reader[len(reader) - 1][-1])
    with pytest.raises(IndexError, match=r"step 2 is out of range for the 2 records"):
        reader.snapshot(0, 2)
    with pytest.raises(IndexError, match=r"trajectory 2 is out of range"):
        reader.snapshot(2, 0)


def test_snapshot_of_neuraloperator_file_is_y(tmp_path: Path) -> None:
    path = tmp_path / "nsforcing_test_8.pt"
    y = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save({"x": torch.zeros(3, 8, 8), "y": y}, path)
    reader = NavierStokesTrajectories(path)
    assert torch.equal(reader.snapshot(2, 0), y[2])
    with pytest.raises(IndexError, match=r"step 1 is out of range for the 1 records"):
        reader.snapshot(0, 1)


def _write(path: Path, field: np.ndarray) -> Path:
    """``field`` as ``vorticity`` in our layout: one checksummed chunk per trajectory."""
    with h5py.File(path, "w") as file:
        file.create_dataset("vorticity", data=field, chunks=(1, *field.shape[1:]), fletcher32=True)
    return path


@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf]])
def test_snapshot_reads_only_its_record(tmp_path: Path, bad: list[float]) -> None:
    """NaN or Inf in record 1 fails the trajectory and that record, not the records next to it."""
    field = np.ones((2, 3, 4, 4), dtype=np.float32)
    field[1, 1, 2, : len(bad)] = bad
    reader = NavierStokesTrajectories(_write(tmp_path / "bad.h5", field))
    with pytest.raises(ValueError, match=r"trajectory 1 of .*bad\.h5 contains NaN or infinite"):
        reader[1]
    assert torch.equal(reader.snapshot(1, 0), torch.ones(4, 4))
    assert torch.equal(reader.snapshot(1, 2), torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"step 1 of trajectory 1 of .*bad\.h5 contains NaN"):
        reader.snapshot(1, 1)


def test_largest_finite_values_pass_the_finiteness_check(tmp_path: Path) -> None:
    """The check sums in float64: float32 maxima whose float32 sum overflows are still data."""
    field = np.full((1, 2, 4, 4), np.finfo(np.float32).max, dtype=np.float32)
    field[0, 1] *= -1
    assert np.isinf(field.sum(dtype=np.float32))
    reader = NavierStokesTrajectories(_write(tmp_path / "big.h5", field))
    assert torch.equal(reader[0], torch.from_numpy(field[0]))
    assert torch.equal(reader.snapshot(0, 1), torch.from_numpy(field[0, 1]))


def test_datamodule_samples_hold_one_record_in_memory(tmp_path: Path) -> None:
    """Reading every sample allocates about one 64 x 64 record at a time, never a trajectory."""
    steps, size, n = 10, 64, 6
    rng = np.random.default_rng(0)
    field = rng.standard_normal((n, steps, size, size)).astype(np.float32)
    path = _write(tmp_path / "ns.h5", field)
    data = NavierStokesDataModule(
        root=path, resolution=size, factor=2, test_factors=(1,), val_fraction=0, test_fraction=0
    )
    data.setup("fit")
    dataset = data.train_dataset
    assert len(dataset) == n * steps
    dataset[0]  # opens the file
    record = 4 * size * size
    tracemalloc.start()
    try:
        for i in range(len(dataset)):
            sample = dataset[i]
            expected = torch.from_numpy(field[i // steps, i % steps])[None]
            assert torch.equal(sample["hr"], expected)
            assert torch.allclose(sample["lr"], block_mean(expected, 2))
            del sample  # its hr shares the record's numpy buffer
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy buffers are traced: reading the trajectory for each sample peaked at 11 records
    assert peak < 3 * record
