from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from conftest import OC20_SAMPLE
from torch_geometric.data import Batch

from lightning_climate.datasets.oc20 import OC20Data, entry_to_data, read_npz_batch
from lightning_climate.transforms import RadiusGraphPBC, radius_graph_pbc
from lightning_climate.transforms.pbc import edge_vectors


def brute_force(
    pos: np.ndarray, cell: np.ndarray, cutoff: float
) -> dict[tuple[int, int, int, int, int], float]:
    """Every (j, i, offset) pair within ``cutoff``, by enumerating enough periodic images."""
    volume = abs(np.linalg.det(cell))
    reps = [
        # +1: atoms may lie up to one cell outside [0, 1)
        math.ceil(cutoff * np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) / volume)
        + 1
        for k in range(3)
    ]
    pairs = {}
    for shift in itertools.product(*(range(-r, r + 1) for r in reps)):
        vec = pos[None, :, :] + np.asarray(shift) @ cell - pos[:, None, :]  # [i, j]
        dist = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero((dist <= cutoff) & (dist > 1e-4)), strict=True):
            pairs[(int(j), int(i), *shift)] = float(dist[i, j])
    return pairs


def as_pairs(edge_index, offsets, dist) -> dict[tuple[int, ...], float]:
    return {
        (int(j), int(i), *map(int, o)): float(d)
        for (j, i), o, d in zip(edge_index.T.tolist(), offsets.tolist(), dist.tolist(), strict=True)
    }


@pytest.fixture(scope="module")
def sample() -> list[OC20Data]:
    return [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(OC20_SAMPLE))]


def test_real_sample_pair_counts_and_stored_edges(sample) -> None:
    batch = Batch.from_data_list(sample)
    edge_index, offsets, dist = radius_graph_pbc(batch.pos, batch.cell, batch.ptr, 6.0, None)
    assert torch.bincount(batch.batch[edge_index[1]]).tolist() == [3328, 10590, 386]
    ours = set(as_pairs(edge_index, offsets, dist))
    stored = set(as_pairs(batch.edge_index, batch.cell_offsets, batch.distances))
    assert len(stored) == 11596 and stored <= ours
    capped, _, _ = radius_graph_pbc(batch.pos, batch.cell, batch.ptr, 6.0, 50)
    assert int(torch.bincount(capped[1]).max()) == 50
    # the 24-atom graph is below the cap everywhere: exactly the stored edges
    last = RadiusGraphPBC()(sample[2].clone())
    assert set(as_pairs(last.edge_index, last.cell_offsets, last.distances)) == set(
        as_pairs(sample[2].edge_index, sample[2].cell_offsets, sample[2].distances)
    )
    ref = dict(as_pairs(edge_index, offsets, dist))
    for key, d in as_pairs(batch.edge_index, batch.cell_offsets, batch.distances).items():
        assert ref[key] == pytest.approx(d, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skewed_small_cells_match_brute_force_and_ase(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # a strongly skewed cell much smaller than the cutoff: many images per axis
    cell = np.array([[2.1, 0.0, 0.0], [1.6, 1.9, 0.0], [0.7, -0.9, 2.4]]) * rng.uniform(0.9, 1.2)
    pos = rng.uniform(-0.2, 1.2, size=(5, 3)) @ cell  # some atoms outside the cell
    cutoff = 4.5
    edge_index, offsets, dist = radius_graph_pbc(
        torch.tensor(pos), torch.tensor(cell), torch.tensor([0, 5]), cutoff, None
    )
    ours = as_pairs(edge_index, offsets, dist)
    ref = brute_force(pos, cell, cutoff)
    assert set(ours) == set(ref)
    assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-9
    i, j, shift, d = neighbor_list("ijSd", Atoms("H5", positions=pos, cell=cell, pbc=True), cutoff)
    assert set(ours) == {
        (int(b), int(a), *map(int, s)) for a, b, s in zip(i, j, shift, strict=True)
    }
    assert len(ours) == len(d)


def test_truncation_keeps_the_nearest_per_centre() -> None:
    rng = np.random.default_rng(4)
    cell = np.diag([6.0, 6.5, 7.0])
    pos = torch.tensor(rng.uniform(0, 1, size=(20, 3)) @ cell)
    full = radius_graph_pbc(pos, torch.tensor(cell), torch.tensor([0, 20]), 6.0, None)
    capped = radius_graph_pbc(pos, torch.tensor(cell), torch.tensor([0, 20]), 6.0, 12)
    for centre in range(20):
        all_d = full[2][full[0][1] == centre].sort().values
        kept = capped[2][capped[0][1] == centre]
        assert kept.numel() == min(12, all_d.numel())
        assert torch.allclose(kept.sort().values, all_d[: kept.numel()])


def test_batched_equals_per_graph(sample) -> None:
    batch = RadiusGraphPBC()(Batch.from_data_list(sample))
    singles = [RadiusGraphPBC()(s.clone()) for s in sample]
    assert batch.neighbors.tolist() == [s.edge_index.shape[1] for s in singles]
    offset = 0
    pieces = []
    for s in singles:
        pieces.append(s.edge_index + offset)
        offset += s.num_nodes
    assert torch.equal(batch.edge_index, torch.cat(pieces, dim=1))


def test_distances_are_differentiable_in_positions() -> None:
    rng = np.random.default_rng(5)
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.5, 3.2, 0.0], [0.0, 0.3, 3.1]], dtype=torch.float64)
    pos = torch.tensor(rng.uniform(0, 3, size=(4, 3)), requires_grad=True)
    edge_index, offsets, _ = radius_graph_pbc(pos, cell, torch.tensor([0, 4]), 4.0, None)
    batch = torch.zeros(4, dtype=torch.long)

    def energy(p: torch.Tensor) -> torch.Tensor:
        _, d = edge_vectors(p, cell[None], edge_index, offsets, batch)
        return (torch.exp(-d) * d**2).sum()

    assert torch.autograd.gradcheck(energy, (pos,))
    # translating every atom changes nothing
    (grad,) = torch.autograd.grad(energy(pos), pos)
    assert torch.allclose(grad.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_zero_volume_and_bad_arguments() -> None:
    pos = torch.zeros(2, 3)
    flat = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])
    with pytest.raises(ValueError, match="system 0 has a cell of zero volume"):
        radius_graph_pbc(pos, flat, torch.tensor([0, 2]), 6.0)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        RadiusGraphPBC(cutoff=0)
    with pytest.raises(ValueError, match="max_neighbors"):
        RadiusGraphPBC(max_neighbors=0)
    with pytest.raises(KeyError, match="needs `cell`"):
        RadiusGraphPBC()(OC20Data(pos=pos))


def test_non_periodic_axis_has_no_images() -> None:
    cell = torch.diag(torch.tensor([2.0, 2.0, 2.0]))
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    _, offsets, _ = radius_graph_pbc(
        pos, cell, torch.tensor([0, 2]), 3.0, None, pbc=(True, True, False)
    )
    assert offsets.shape[0] > 0 and int(offsets[:, 2].abs().max()) == 0
