"""OC20 LMDBs as fairchem's current preprocessing writes them (``format="atoms_to_graphs"``)."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import OC20_SAMPLE

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

EDGE_FIELDS = ("edge_index", "cell_offsets", "distances")


@pytest.fixture(scope="module")
def entries() -> list[dict[str, np.ndarray]]:
    return read_npz_batch(OC20_SAMPLE)


def s2ef_frame(entry: dict[str, np.ndarray], edges: bool = True) -> dict[str, np.ndarray]:
    """A frame as fairchem's S2EF preprocessing sees it: ``energy`` and forces, edges optional."""
    frame = {k: v for k, v in entry.items() if k not in ("y_init", "y_relaxed", "pos_relaxed")}
    frame["energy"] = entry["y_relaxed"]
    if not edges:
        frame = {k: v for k, v in frame.items() if k not in EDGE_FIELDS}
    return frame


def test_atoms_to_graphs_entries_get_the_official_distances(tmp_path: Path, entries) -> None:
    path = tmp_path / "s2ef.lmdb"
    write_oc20_lmdb(path, [s2ef_frame(e) for e in entries], format="atoms_to_graphs")
    dataset = OC20LMDBDataset(path, allow_pickle=True)
    for i, entry in enumerate(entries):
        sample = dataset[i]
        raw = dataset.raw(i)
        assert "distances" not in raw and {"edge_distance_vec", "forces", "tags"} <= set(raw)
        assert raw["atomic_numbers"].dtype == np.uint8 and raw["tags"].dtype == np.int32
        assert raw["nedges"] == len(entry["distances"]) and isinstance(raw["energy"], np.float64)
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
    frame = s2ef_frame(entries[2])
    pos, cell, offsets = frame["pos"], frame["cell"].reshape(3, 3), frame["cell_offsets"]
    j, i = frame["edge_index"]
    frame["edge_distance_vec"] = pos[j] - pos[i] + offsets @ cell
    frame["edge_distance_vec"][5, 1] += value
    write_oc20_lmdb(tmp_path / "bad.lmdb", [frame], format="atoms_to_graphs")
    with pytest.raises(ValueError, match=rf"entry 0 of .*bad.lmdb: edge_distance_vec {match}"):
        OC20LMDBDataset(tmp_path / "bad.lmdb", allow_pickle=True)[0]


def test_shard_directory_with_locks_and_logs_without_edges(tmp_path: Path, entries) -> None:
    shards = tmp_path / "s2ef_train_200k"
    shards.mkdir()
    frames = [s2ef_frame(e, edges=False) for e in entries]
    frames[1]["sid"] = np.asarray("random1302564")  # AtomsToGraphs accepts any identifier
    write_oc20_lmdb(shards / "data.0000.lmdb", frames[:2], format="atoms_to_graphs")
    write_oc20_lmdb(shards / "data.0001.lmdb", frames[2:], format="atoms_to_graphs")
    for shard in ("data.0000.lmdb", "data.0001.lmdb"):  # the writer's lock files stay behind
        lmdb.open(str(shards / shard), subdir=False, readonly=True).close()
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
    frames = [s2ef_frame(e) for e in entries]
    frames[1]["energy"] = np.float64("nan")
    write_oc20_lmdb(tmp_path / "data.lmdb", frames, format="atoms_to_graphs")
    dataset = OC20LMDBDataset(tmp_path / "data.lmdb", allow_pickle=True)
    assert dataset.target(0, "energy") == pytest.approx(float(entries[0]["y_relaxed"]))
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dataset.target(1, "energy")
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dataset[1]
    # the datamodule computes its statistics through `target`, so it stops with the same error
    dm = OC20DataModule(task="s2ef", train_path=str(tmp_path / "data.lmdb"), allow_pickle=True)
    with pytest.raises(ValueError, match=r"entry 1 of .*data.lmdb: energy is nan"):
        dm.train_statistics()


def test_npz_entries_keep_text_identifiers(tmp_path: Path, entries) -> None:
    entry = dict(entries[2], sid=np.asarray("random1874170"))
    write_oc20_lmdb(tmp_path / "data.lmdb", [entry])
    assert OC20LMDBDataset(tmp_path / "data.lmdb")[0].sid == "random1874170"
