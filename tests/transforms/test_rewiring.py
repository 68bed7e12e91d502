from __future__ import annotations

import pytest
import torch
from conftest import OC20_SAMPLE
from torch_geometric.data import Batch

from lightning_climate.datasets.oc20 import OC20Data, entry_to_data, read_npz_batch
from lightning_climate.transforms import (
    OneSupernodePerAtomType,
    OneSupernodePerGraph,
    RemoveAdsorbateCatalystEdges,
    RemoveTag0,
)
from lightning_climate.transforms.pbc import edge_vectors


def load() -> list[OC20Data]:
    return [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(OC20_SAMPLE))]


# golden numbers of the phast package on the real sample (research note §7)
GOLDEN = [
    (RemoveTag0(), 64, 1236, [15, 37, 12], [262, 788, 186], None),
    (OneSupernodePerGraph(), 67, 1311, [16, 38, 13], None, [50, 135, 12]),
    (OneSupernodePerAtomType(), 71, 1421, [18, 39, 14], None, [24, 12, 14, 81, 54, 8, 4]),
    (RemoveAdsorbateCatalystEdges(), 261, 11246, [65, 172, 24], [2906, 8032, 308], None),
]


@pytest.mark.parametrize(("transform", "atoms", "edges", "natoms", "neighbors", "subnodes"), GOLDEN)
def test_golden_counts_on_real_oc20(transform, atoms, edges, natoms, neighbors, subnodes) -> None:
    batch = transform(Batch.from_data_list(load()))
    assert batch.pos.shape[0] == atoms and batch.edge_index.shape[1] == edges
    assert batch.natoms.tolist() == natoms
    assert batch.ptr.tolist() == [0, *torch.tensor(natoms).cumsum(0).tolist()]
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), torch.tensor(natoms)))
    assert int(batch.neighbors.sum()) == edges
    if neighbors is not None:
        assert batch.neighbors.tolist() == neighbors
    if subnodes is not None:
        assert batch.subnodes.tolist() == subnodes
    # per-sample transform then collation gives the same graphs
    per_sample = Batch.from_data_list([transform(d) for d in load()])
    assert per_sample.natoms.tolist() == natoms
    assert sorted(per_sample.edge_index.T.tolist()) == sorted(batch.edge_index.T.tolist())
    assert torch.allclose(per_sample.pos, batch.pos)
    # the targets are untouched; the original object is not modified
    assert torch.allclose(batch.y_relaxed, torch.tensor([0.871002, 0.587996, -4.918020]), atol=1e-5)


@pytest.mark.parametrize("transform", [t[0] for t in GOLDEN])
def test_stored_distances_stay_consistent_with_offsets(transform) -> None:
    batch = transform(Batch.from_data_list(load()))
    _, dist = edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.cell_offsets, batch.batch)
    assert torch.allclose(dist, batch.distances, atol=1e-4)
    assert bool((batch.edge_index[0] != batch.edge_index[1]).all())
    assert int(batch.edge_index.max()) < batch.pos.shape[0]
    # edges never cross graphs
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])


def test_supernode_properties() -> None:
    data = load()[2]
    out = OneSupernodePerGraph()(data.clone())
    sub = data.tags == 0
    last = out.pos.shape[0] - 1
    assert out.atomic_numbers[last].item() == 84 and out.tags[last].item() == 0
    assert bool(out.fixed[last])
    expected = torch.cat([data.pos[sub, :2].mean(0), data.pos[sub, 2].max()[None]])
    assert torch.allclose(out.pos[last], expected)
    assert torch.allclose(out.force[last], data.force[sub].mean(0))
    assert torch.allclose(out.pos_relaxed[last], expected)
    # kept atoms keep their order and values
    assert torch.equal(out.pos[:last], data.pos[~sub])
    # per element: super-nodes keep the atomic number of what they merge, in increasing Z
    typed = OneSupernodePerAtomType()(load()[0])
    elements = sorted(set(load()[0].atomic_numbers[load()[0].tags == 0].tolist()))
    assert typed.atomic_numbers[-len(elements) :].tolist() == elements


def test_graph_without_subsurface_atoms_is_left_alone() -> None:
    data = load()[2]
    data.tags = torch.where(data.tags == 0, torch.ones_like(data.tags), data.tags)
    for transform in (RemoveTag0(), OneSupernodePerGraph(), OneSupernodePerAtomType()):
        out = transform(data.clone())
        assert torch.equal(out.pos, data.pos)
        assert out.edge_index.shape[1] == 386


def test_disconnected_graph_keeps_adsorbate_and_catalyst_edges() -> None:
    batch = RemoveAdsorbateCatalystEdges()(Batch.from_data_list(load()))
    tj, ti = batch.tags[batch.edge_index]
    assert not bool(((tj == 2) ^ (ti == 2)).any())
    ads_ads = torch.bincount(batch.batch[batch.edge_index[1][(tj == 2) & (ti == 2)]], minlength=3)
    assert ads_ads.tolist() == [0, 12, 76]


def test_missing_tags_is_a_clear_error() -> None:
    data = load()[0]
    del data.tags
    with pytest.raises(KeyError, match="needs \\['tags'\\]"):
        RemoveTag0()(data)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        OneSupernodePerGraph(cutoff=-1)
