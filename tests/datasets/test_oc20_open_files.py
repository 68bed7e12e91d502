"""OC20 files that are already open in the process: the user's own environment, forked workers."""

from __future__ import annotations

import random
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import OC20_SAMPLE
from torch_geometric.loader import DataLoader

from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch
from lightning_climate.datasets.oc20_lmdb_mmap import MappedLMDB


@pytest.fixture(scope="module")
def entries() -> list[dict[str, np.ndarray]]:
    return read_npz_batch(OC20_SAMPLE)


def test_mapped_reader_equals_lmdb_on_a_deep_tree_with_overflow_pages(tmp_path: Path) -> None:
    rng = random.Random(0)
    # long and short keys (long ones make a deep tree), inline and overflow values
    values = {
        str(i).encode() + b"." * rng.choice([0, 400]): rng.randbytes(rng.choice([3, 90, 2500]))
        for i in range(3000)
    }
    env = lmdb.open(str(tmp_path / "x.lmdb"), subdir=False, map_size=1 << 30, lock=False)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    depth = env.stat()["depth"]
    env.close()
    mapped = MappedLMDB(tmp_path / "x.lmdb")
    assert depth >= 3
    assert all(mapped.get(key) == value for key, value in values.items())
    assert mapped.get(b"3000") is None and mapped.get(b"") is None
    assert mapped.stat()["entries"] == len(values)
    mapped.close()


@pytest.mark.parametrize("layout", ["npz", "pickle"])
def test_file_the_user_holds_open_is_read_with_a_warning(
    tmp_path: Path, entries, layout: str
) -> None:
    path = tmp_path / "data.lmdb"
    write_oc20_lmdb(path, entries, format=layout)
    mine = lmdb.open(str(path), subdir=False, readonly=True)  # the user's own environment
    with mine.begin() as txn:
        assert txn.get(b"length") is not None
    with pytest.warns(UserWarning, match=r"data.lmdb is already open in this process"):
        dataset = OC20LMDBDataset(path, allow_pickle=True)
    assert len(dataset) == 3
    for i, entry in enumerate(entries):
        sample = dataset[i]
        np.testing.assert_array_equal(sample.pos.numpy(), entry["pos"])
        np.testing.assert_array_equal(sample.edge_index.numpy(), entry["edge_index"])
        assert sample.y_relaxed.item() == pytest.approx(float(entry["y_relaxed"]), abs=1e-6)
    mine.close()


def _batches(dataset: OC20LMDBDataset, workers: int) -> list[torch.Tensor]:
    loader = DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    return [torch.cat([b.index.double(), b.pos.sum(0).double()]) for b in loader]


def test_forked_workers_open_files_their_parent_has_open(tmp_path: Path, entries) -> None:
    write_oc20_lmdb(tmp_path / "data.lmdb", entries * 2)
    dataset = OC20LMDBDataset(tmp_path / "data.lmdb")
    dataset[0]  # the parent process has the environment open when the workers fork
    expected = _batches(dataset, 0)
    for got, want in zip(_batches(dataset, 2), expected, strict=True):
        torch.testing.assert_close(got, want)
    assert dataset[5].index.item() == 5  # and the parent reopens it afterwards
