from __future__ import annotations

import pytest
import torch
from conftest import central_difference_force, z_rotation
from torch_geometric.data import Batch
from torch_geometric.nn.models import dimenet, dimenet_utils
from torch_geometric.nn.models.dimenet import SphericalBasisLayer

from lightning_climate.datasets.oc20 import OC20Data
from lightning_climate.models import CatalystModel
from lightning_climate.models.dimenet import DimeNetPPBackbone, _pyg_bessel_basis, triplets
from lightning_climate.models.schnet import Graph
from lightning_climate.transforms import radius_graph_pbc


def test_triplets_match_brute_force_with_periodic_images() -> None:
    # two atoms in a small cell: an atom is its own neighbour through other images
    cell = torch.eye(3) * 2.5
    pos = torch.tensor([[0.1, 0.2, 0.3], [1.2, 1.1, 1.4]])
    edge_index, offsets, _ = radius_graph_pbc(pos, cell, torch.tensor([0, 2]), 3.0, None)
    idx_kj, idx_ji = triplets(edge_index, offsets, 2)
    expected = set()
    for ji in range(edge_index.shape[1]):
        for kj in range(edge_index.shape[1]):
            if edge_index[1, kj] != edge_index[0, ji]:
                continue
            same = edge_index[0, kj] == edge_index[1, ji] and bool(
                (offsets[kj] + offsets[ji] == 0).all()
            )
            if not same:
                expected.add((kj, ji))
    assert set(zip(idx_kj.tolist(), idx_ji.tolist(), strict=True)) == expected
    assert len(expected) == idx_kj.numel() > 0


def test_backbone_equals_pyg_dimenet_on_a_molecule(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pos = torch.randn(7, 3) * 1.2
    z = torch.tensor([6, 1, 1, 8, 7, 1, 6])
    cell = torch.eye(3) * 50.0  # far larger than the cutoff: no periodic images
    edge_index, offsets, _ = radius_graph_pbc(
        pos, cell, torch.tensor([0, 7]), 4.0, None, pbc=(False,) * 3
    )
    backbone = DimeNetPPBackbone(16, 2, 8, 4, 16, 3, 4, cutoff=4.0)
    graph = Graph(
        z,
        torch.ones_like(z),
        pos,
        torch.zeros(7, dtype=torch.long),
        cell[None],
        edge_index,
        offsets,
        1,
    )
    _, h = backbone(graph)

    def radius_graph(pos, r, batch=None, max_num_neighbors=32):
        return edge_index

    def pyg_triplets(edge_index, num_nodes):
        idx_kj, idx_ji = triplets(edge_index, offsets, num_nodes)
        j, i = edge_index
        return i, j, i[idx_ji], j[idx_ji], j[idx_kj], idx_kj, idx_ji

    # PyG's forward needs pyg-lib and torch-sparse; feed it our graph and triplets instead
    monkeypatch.setattr(dimenet, "radius_graph", radius_graph)
    monkeypatch.setattr(dimenet, "triplets", pyg_triplets)
    expected = backbone.dimenet(z, pos)
    assert torch.allclose(h.sum(0), expected, atol=1e-5)


def test_dimenet_catalyst_model_forces_and_invariance() -> None:
    # a small periodic system whose cell is smaller than the cutoff: angles must use the images
    torch.manual_seed(0)
    cell = torch.tensor([[3.6, 0.0, 0.0], [0.4, 3.4, 0.0], [0.0, 0.3, 3.8]], dtype=torch.float64)
    pos = torch.rand(4, 3, dtype=torch.float64) @ cell
    edge_index, offsets, dist = radius_graph_pbc(pos, cell, torch.tensor([0, 4]), 4.0, None)
    data = OC20Data(
        pos=pos,
        atomic_numbers=torch.tensor([29, 29, 8, 1]),
        tags=torch.tensor([0, 1, 2, 2]),
        cell=cell[None],
        edge_index=edge_index,
        cell_offsets=offsets,
        distances=dist,
        natoms=torch.tensor([4]),
    )
    data = Batch.from_data_list([data])
    # PyG builds the spherical basis with sympy: the OC20 size (7 x 6) takes ~10 s, 3 x 4 ~0.5 s
    model = CatalystModel(
        8,
        num_interactions=1,
        cutoff=4.0,
        force_head="gradient",
        backbone="dimenet++",
        num_spherical=3,
        num_radial=4,
    )
    assert model.backbone.dimenet.sbf.num_spherical == 3
    model = model.double().eval()
    out = model(data)
    atom, step = 2, 1e-5
    finite = central_difference_force(model, data, atom, 0, graph=0, step=step)
    assert out["forces"][atom, 0].item() == pytest.approx(finite, rel=1e-4, abs=1e-8)
    rot = z_rotation(1.0)
    turned = data.clone()
    turned.pos, turned.cell = data.pos @ rot.T, data.cell @ rot.T
    assert torch.allclose(model(turned)["energy"], out["energy"], atol=1e-8)
    shifted = data.clone()
    shifted.pos = data.pos + cell[0]  # an atom moved by a lattice vector is the same system
    assert torch.allclose(model(shifted)["energy"], out["energy"], atol=1e-8)
    with pytest.raises(ValueError, match="dimenet\\+\\+ is available"):
        CatalystModel(backbone="dimenet++", ads_cat="attention")
    with pytest.raises(ValueError, match="backbone must be"):
        CatalystModel(backbone="gemnet")


def test_cached_bessel_basis_gives_pygs_spherical_basis() -> None:
    reference = SphericalBasisLayer(2, 3, cutoff=4.0)  # PyG's own construction, no cache
    first = DimeNetPPBackbone(8, 1, 8, 4, 8, 2, 3, cutoff=4.0)
    second = DimeNetPPBackbone(8, 1, 8, 4, 8, 2, 3, cutoff=4.0)  # the basis comes from the cache
    assert dimenet_utils.bessel_basis is _pyg_bessel_basis  # PyG's function is restored
    dist = torch.linspace(0.5, 3.9, 6)
    angle = torch.linspace(0.1, 3.0, 9)
    idx_kj = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2, 4])
    expected = reference(dist, angle, idx_kj)
    for backbone in (first, second):
        torch.testing.assert_close(backbone.dimenet.sbf(dist, angle, idx_kj), expected)
