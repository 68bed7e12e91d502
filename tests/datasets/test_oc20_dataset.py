from __future__ import annotations

import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import OC20_SAMPLE
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from lightning_climate.datasets import (
    OC20LMDBDataset,
    convert_oc20_lmdb,
    oc20,
    write_oc20_lmdb,
)
from lightning_climate.datasets.oc20 import read_npz_batch


@pytest.fixture(scope="module")
def entries() -> list[dict[str, np.ndarray]]:
    return read_npz_batch(OC20_SAMPLE)


def _same(data: Data, entry: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(data.pos.numpy(), entry["pos"])
    np.testing.assert_array_equal(data.atomic_numbers.numpy(), entry["atomic_numbers"])
    np.testing.assert_array_equal(data.edge_index.numpy(), entry["edge_index"])
    np.testing.assert_array_equal(data.cell_offsets.numpy(), entry["cell_offsets"])
    assert data.y_relaxed.item() == pytest.approx(float(entry["y_relaxed"]), abs=1e-6)
    assert data.natoms.item() == len(entry["pos"])


def test_npz_round_trip_keeps_the_real_systems(tmp_path: Path, entries) -> None:
    path = tmp_path / "data.lmdb"
    assert write_oc20_lmdb(path, entries) == 3
    dataset = OC20LMDBDataset(path)
    assert len(dataset) == 3
    for i, entry in enumerate(entries):
        sample = dataset[i]
        _same(sample, entry)
        assert sample.index.item() == i
        assert sample.atomic_numbers.dtype == torch.long
        assert sample.fixed.dtype == torch.bool
    # the golden facts of the real sample
    assert sum(int(dataset[i].atomic_numbers.sum()) for i in range(3)) == 7944
    assert [dataset[i].sid.item() for i in range(3)] == [2077917, 1302564, 1874170]


def test_batching_keeps_index_and_offsets_edges(tmp_path: Path, entries) -> None:
    write_oc20_lmdb(tmp_path / "data.lmdb", entries)
    batch = next(iter(DataLoader(OC20LMDBDataset(tmp_path / "data.lmdb"), batch_size=3)))
    assert batch.index.tolist() == [0, 1, 2]
    assert batch.sid.tolist() == [2077917, 1302564, 1874170]
    assert batch.edge_index.shape == (2, 11596)
    assert int(batch.edge_index[:, -1].min()) >= 65 + 172  # last graph's edges are offset
    assert batch.cell.shape == (3, 3, 3)


def test_pickled_layout_is_refused_by_default_and_read_on_opt_in(tmp_path: Path, entries) -> None:
    path = tmp_path / "upstream.lmdb"
    write_oc20_lmdb(path, entries, format="pickle")
    with pytest.raises(PermissionError, match="allow_pickle=True"):
        OC20LMDBDataset(path)[0]
    dataset = OC20LMDBDataset(path, allow_pickle=True)
    assert len(dataset) == 3  # from the pickled `length` key
    for i, entry in enumerate(entries):
        _same(dataset[i], entry)


def _write_raw(path: Path, values: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()


def test_pyg1_entries_and_upstream_field_names(tmp_path: Path, entries) -> None:
    # PyG 1.x objects restore their fields straight into __dict__ (no `_store`); S2EF files of
    # that era name the energy `y` and newer ones name the forces `forces`.
    entry = entries[2]
    old = Data.__new__(Data)
    old.__dict__.update(
        pos=torch.tensor(entry["pos"]),
        atomic_numbers=torch.tensor(entry["atomic_numbers"]).float(),
        cell=torch.tensor(entry["cell"])[None],
        natoms=24,
        y=-3.5,
        forces=torch.tensor(entry["force"]),
        fixed=torch.tensor(entry["fixed"]).float(),
        tags=torch.tensor(entry["tags"]),
        fid=7,
        sid=1874170,
    )
    shard = tmp_path / "s2ef" / "data.0000.lmdb"
    shard.parent.mkdir()
    _write_raw(shard, {b"0": pickle.dumps(old, protocol=-1), b"length": pickle.dumps(1)})
    write_oc20_lmdb(tmp_path / "s2ef" / "data.0001.lmdb", entries[:2])
    dataset = OC20LMDBDataset(tmp_path / "s2ef", allow_pickle=True, required=("force",))
    assert len(dataset) == 3
    first = dataset[0]
    assert first.energy.item() == pytest.approx(-3.5)
    np.testing.assert_array_equal(first.force.numpy(), entry["force"])
    assert first.fid.item() == 7 and first.index.item() == 0
    assert dataset[2].sid.item() == 1302564 and dataset[2].index.item() == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.lmdb"
    _write_raw(path, {b"0": pickle.dumps(_Evil()), b"length": pickle.dumps(1)})
    with pytest.raises(RuntimeError, match=r"refusing to unpickle"):
        OC20LMDBDataset(path, allow_pickle=True)[0]


def test_converter_writes_pickle_free_copy(tmp_path: Path, entries) -> None:
    write_oc20_lmdb(tmp_path / "up.lmdb", entries, format="pickle")
    with pytest.raises(PermissionError, match="allow_pickle"):
        convert_oc20_lmdb(tmp_path / "up.lmdb", tmp_path / "ours.lmdb", progress=False)
    (written,) = convert_oc20_lmdb(
        tmp_path / "up.lmdb", tmp_path / "ours.lmdb", allow_pickle=True, progress=False
    )
    dataset = OC20LMDBDataset(written)  # no allow_pickle needed any more
    for i, entry in enumerate(entries):
        _same(dataset[i], entry)


def test_missing_length_key_counts_entries(tmp_path: Path, entries) -> None:
    path = tmp_path / "nolength.lmdb"
    _write_raw(
        path,
        {
            str(i).encode(): pickle.dumps(Data(**{k: torch.as_tensor(v) for k, v in e.items()}))
            for i, e in enumerate(entries)
        },
    )
    assert len(OC20LMDBDataset(path, allow_pickle=True)) == 3


def test_missing_path_names_the_generator(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="oc20_generate"):
        OC20LMDBDataset(tmp_path / "nothing")


def test_truncated_file_is_a_clear_error(tmp_path: Path, entries) -> None:
    path = tmp_path / "data.lmdb"
    write_oc20_lmdb(path, entries)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    # reading a truncated LMDB through its memory map would kill the process (SIGBUS)
    with pytest.raises(RuntimeError, match=r"data.lmdb is truncated: \d+ bytes where its header"):
        OC20LMDBDataset(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(RuntimeError, match="is not an LMDB file"):
        OC20LMDBDataset(path)


def test_length_beyond_entries_names_the_entry(tmp_path: Path, entries) -> None:
    path = tmp_path / "short.lmdb"
    write_oc20_lmdb(path, entries[:1], format="pickle")
    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(2))
    env.close()
    with pytest.raises(RuntimeError, match=r"entry 1 of .* is missing"):
        OC20LMDBDataset(path, allow_pickle=True)[1]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda e: e.pop("cell"), KeyError, r"entry 0 of .* lacks the field\(s\) \['cell'\]"),
        (lambda e: e.update(cell=np.zeros((1, 3, 3))), ValueError, "zero volume"),
        (
            lambda e: e["atomic_numbers"].__setitem__(0, 150),
            ValueError,
            r"unknown element\(s\) \[150",
        ),
        (lambda e: e["pos"].__setitem__(0, [500.0, 0.0, 0.0]), ValueError, "outside the cell"),
        (lambda e: e.update(tags=e["tags"][:-1]), ValueError, "tags has 23 rows for 24 atoms"),
        (lambda e: e.pop("cell_offsets"), ValueError, "has edge_index but not cell_offsets"),
        (lambda e: e.update(nedges=7), ValueError, "nedges is 7 but edge_index has 386 edges"),
        (lambda e: e.update(natoms=23), ValueError, "natoms is 23 but pos has 24 rows"),
        (lambda e: e["pos"].__setitem__((3, 1), np.nan), ValueError, r"pos holds NaN or Inf \(1 "),
        (lambda e: e["cell"].__setitem__((1, 1), np.inf), ValueError, "cell holds NaN or Inf"),
        (lambda e: e["force"].__setitem__((0, 0), np.nan), ValueError, "force holds NaN or Inf"),
        (lambda e: e.update(y_relaxed=np.float64("nan")), ValueError, "y_relaxed is nan"),
        (lambda e: e["distances"].__setitem__(5, np.inf), ValueError, "distances holds NaN"),
        (
            lambda e: e["atomic_numbers"].__setitem__(0, -3),
            ValueError,
            r"unknown element\(s\) \[-3",
        ),
    ],
)
def test_bad_entries_name_the_entry_and_fix(tmp_path: Path, entries, change, error, match) -> None:
    entry = {k: v.copy() for k, v in entries[2].items()}
    change(entry)
    write_oc20_lmdb(tmp_path / "bad.lmdb", [entry])
    with pytest.raises(error, match=match):
        OC20LMDBDataset(tmp_path / "bad.lmdb")[0]


def test_required_target_missing(tmp_path: Path, entries) -> None:
    entry = {k: v for k, v in entries[0].items() if k != "y_relaxed"}
    write_oc20_lmdb(tmp_path / "x.lmdb", [entry])
    with pytest.raises(KeyError, match="y_relaxed"):
        OC20LMDBDataset(tmp_path / "x.lmdb", required=("y_relaxed",))[0]


def test_dataset_pickles_for_workers(tmp_path: Path, entries) -> None:
    write_oc20_lmdb(tmp_path / "data.lmdb", entries)
    dataset = OC20LMDBDataset(tmp_path / "data.lmdb")
    dataset[0]  # opens the environment
    clone = pickle.loads(pickle.dumps(dataset))
    _same(clone[1], entries[1])


def test_write_is_atomic_on_failure(tmp_path: Path, entries) -> None:
    def broken():
        yield entries[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_oc20_lmdb(tmp_path / "data.lmdb", broken())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["npz", "pickle"])
def test_writer_commits_in_pieces(tmp_path: Path, entries, monkeypatch, layout: str) -> None:
    # large files are written in several transactions (LMDB keeps a transaction in memory)
    monkeypatch.setattr(oc20, "_COMMIT_BYTES", 1000)
    write_oc20_lmdb(tmp_path / "data.lmdb", entries * 2, format=layout)
    env = lmdb.open(str(tmp_path / "data.lmdb"), subdir=False, readonly=True, lock=False)
    # one transaction per entry (each is over 1000 bytes), and one for the length key
    assert env.info()["last_txnid"] == 7
    env.close()
    dataset = OC20LMDBDataset(tmp_path / "data.lmdb", allow_pickle=True)
    assert len(dataset) == 6
    for i, entry in enumerate(entries * 2):
        _same(dataset[i], entry)
