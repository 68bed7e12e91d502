"""OC20 LMDBs as fairchem's current preprocessing writes them, built by our own writers here."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

SAMPLE = Path(__file__).parents[1] / "data" / "oc20" / "is2re_bs3.npz"


@pytest.fixture(scope="module")
def entries() -> list[dict[str, np.ndarray]]:
    return read_npz_batch(SAMPLE)


def atoms_to_graphs_data(entry: dict[str, np.ndarray], edges: bool = True) -> Data:
    """A PyG 2 ``Data`` with the fields and dtypes of fairchem ``AtomsToGraphs`` defaults.

    ``r_edges=True`` stores ``edge_index``, ``cell_offsets``, ``edge_distance_vec`` (float32
    arithmetic, as upstream) and ``nedges``, but ``r_distances=False`` stores no distances; atomic
    numbers are uint8, tags and ``fixed`` int32, energies numpy float64 scalars (S2EF's
    ``r_energy``/``r_forces`` add ``energy`` and ``forces``).
    """
    pos = torch.from_numpy(entry["pos"]).float()
    cell = torch.from_numpy(entry["cell"]).view(1, 3, 3).float()
    data = Data(
        cell=cell,
        pos=pos,
        atomic_numbers=torch.from_numpy(entry["atomic_numbers"]).to(torch.uint8),
        natoms=len(pos),
        tags=torch.from_numpy(entry["tags"]).to(torch.int32),
        fixed=torch.from_numpy(entry["fixed"]).to(torch.int32),
        sid=int(entry["sid"]),
        energy=np.float64(entry["y_relaxed"]),
        forces=torch.from_numpy(entry["force"]).float(),
    )
    if edges:
        edge_index = torch.from_numpy(entry["edge_index"])
        offsets = torch.from_numpy(entry["cell_offsets"])
        row, col = edge_index
        shift = offsets.float().view(-1, 1, 3).bmm(cell.expand(len(offsets), 3, 3)).view(-1, 3)
        data.edge_index = edge_index
        data.cell_offsets = offsets
        data.edge_distance_vec = pos[row] - pos[col] + shift
        data.nedges = int(edge_index.shape[1])
    return data


def write_fairchem_lmdb(path: Path, items: Sequence[Data]) -> None:
    """Write pickled ``Data`` the way fairchem's preprocessing does (a ``-lock`` file appears)."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for i, item in enumerate(items):
            txn.put(f"{i}".encode("ascii"), pickle.dumps(item, protocol=-1))
        txn.put(b"length", pickle.dumps(len(items), protocol=-1))
    env.sync()
    env.close()


def test_atoms_to_graphs_entries_get_the_official_distances(tmp_path: Path, entries) -> None:
    path = tmp_path / "is2re.lmdb"
    write_fairchem_lmdb(path, [atoms_to_graphs_data(e) for e in entries])
    dataset = OC20LMDBDataset(path, allow_pickle=True)
    for i, entry in enumerate(entries):
        sample = dataset[i]
        assert "distances" not in dataset.raw(i)
        # computed from pos, cell and cell_offsets, equal to the distances OC20 ships
        np.testing.assert_allclose(sample.distances.numpy(), entry["distances"], rtol=0, atol=5e-6)
        assert sample.distances.dtype == torch.float32
        assert sample.atomic_numbers.dtype == torch.long
        np.testing.assert_array_equal(sample.atomic_numbers.numpy(), entry["atomic_numbers"])
        assert sample.tags.dtype == torch.long and sample.fixed.dtype == torch.bool
        np.testing.assert_array_equal(sample.fixed.numpy(), entry["fixed"] == 1)
        assert sample.energy.item() == pytest.approx(float(entry["y_relaxed"]), abs=1e-6)
        np.testing.assert_array_equal(sample.force.numpy(), entry["force"])
        assert sample.sid.item() == int(entry["sid"])
        assert "edge_distance_vec" not in sample and "nedges" not in sample


@pytest.mark.parametrize(
    ("value", "match"),
    [(0.1, r"disagrees with pos, cell and cell_offsets \(by 0.1 "), (np.nan, "holds NaN or Inf")],
)
def test_bad_edge_distance_vec_is_refused(tmp_path: Path, entries, value, match) -> None:
    data = atoms_to_graphs_data(entries[2])
    data.edge_distance_vec[5, 1] += value
    write_fairchem_lmdb(tmp_path / "bad.lmdb", [data])
    with pytest.raises(ValueError, match=rf"entry 0 of .*bad.lmdb: edge_distance_vec {match}"):
        OC20LMDBDataset(tmp_path / "bad.lmdb", allow_pickle=True)[0]


def test_shard_directory_with_locks_and_logs_without_edges(tmp_path: Path, entries) -> None:
    shards = tmp_path / "s2ef_train_200k"
    shards.mkdir()
    frames = [atoms_to_graphs_data(e, edges=False) for e in entries]
    frames[1].sid = "random1302564"  # AtomsToGraphs accepts any identifier
    write_fairchem_lmdb(shards / "data.0000.lmdb", frames[:2])
    write_fairchem_lmdb(shards / "data.0001.lmdb", frames[2:])
    (shards / "data_log.0000.txt").write_text("random1302564,frame0,-0.5\n")
    names = sorted(p.name for p in shards.iterdir())
    assert "data.0000.lmdb-lock" in names and "data_log.0000.txt" in names
    dataset = OC20LMDBDataset(shards, allow_pickle=True, required=("energy", "force"))
    assert len(dataset) == 3 and [f.name for f in dataset.files] == names[:3:2]
    assert dataset[1].sid == "random1302564"
    sample = dataset[2]
    assert "edge_index" not in sample
    # the datamodule's transform gives frames without edges OC20's graph (6 Å, nearest 50): on
    # this 24-atom system it is exactly the graph OC20 stores
    graph = OC20DataModule().transform(sample)
    stored = entries[2]
    ours = {
        (*e, *o)
        for e, o in zip(graph.edge_index.T.tolist(), graph.cell_offsets.tolist(), strict=True)
    }
    theirs = {
        (*e, *o)
        for e, o in zip(
            stored["edge_index"].T.tolist(), stored["cell_offsets"].tolist(), strict=True
        )
    }
    assert ours == theirs and len(ours) == 386
    np.testing.assert_allclose(
        np.sort(graph.distances.numpy()), np.sort(stored["distances"]), rtol=0, atol=5e-6
    )


def test_nan_energy_is_an_error_naming_the_entry_not_a_nan_statistic(
    tmp_path: Path, entries
) -> None:
    frames = [atoms_to_graphs_data(e) for e in entries]
    frames[1].energy = np.float64("nan")
    write_fairchem_lmdb(tmp_path / "data.lmdb", frames)
    dataset = OC20LMDBDataset(tmp_path / "data.lmdb", allow_pickle=True)
    assert dataset.target(0, "energy") == pytest.approx(float(entries[0]["y_relaxed"]))
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dataset.target(1, "energy")
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dataset[1]
    # the datamodule computes its statistics through `target`, so it stops with the same error
    dm = OC20DataModule(task="s2ef", train_path=str(tmp_path / "data.lmdb"), allow_pickle=True)
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dm.setup("fit")


def test_npz_entries_keep_text_identifiers(tmp_path: Path, entries) -> None:
    entry = dict(entries[2], sid=np.asarray("random1874170"))
    write_oc20_lmdb(tmp_path / "data.lmdb", [entry])
    assert OC20LMDBDataset(tmp_path / "data.lmdb")[0].sid == "random1874170"
