from __future__ import annotations

import math

import pytest
import torch
from conftest import OC20_SAMPLE, central_difference_force
from torch_geometric.data import Batch, Data

from lightning_climate.datasets.oc20 import entry_to_data, read_npz_batch
from lightning_climate.models import CatalystModel, EnergyHead, PoolingEnergyHead
from lightning_climate.models.pooling import (
    dense_adjacency,
    motif_adjacency,
    normalized_cut,
    orthogonality,
)
from lightning_climate.models.schnet import Graph

SMALL = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 12}
_PER_ATOM = ("pos", "atomic_numbers", "tags", "fixed", "force", "pos_relaxed")


def real_graphs(double: bool = True) -> list[Data]:
    graphs = [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(OC20_SAMPLE))]
    for g in graphs if double else []:
        g.pos, g.cell = g.pos.double(), g.cell.double()
    return graphs  # 65, 172 and 24 atoms: heavy padding in a dense batch


def permuted(graph: Data, seed: int) -> Data:
    """The same system with its atoms and its edges listed in another order."""
    gen = torch.Generator().manual_seed(seed)
    out = graph.clone()
    n = graph.pos.shape[0]
    perm = torch.randperm(n, generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    for key in _PER_ATOM:
        out[key] = graph[key][perm]
    edges = torch.randperm(graph.edge_index.shape[1], generator=gen)
    out.edge_index = inverse[graph.edge_index[:, edges]]
    out.cell_offsets, out.distances = graph.cell_offsets[edges], graph.distances[edges]
    return out


def adjacency(edges: list[tuple[int, int]], n: int) -> torch.Tensor:
    """(1, n, n) adjacency of one graph from undirected edges (one direction given)."""
    index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T
    return dense_adjacency(index, torch.zeros(n, dtype=torch.long), 1, n, torch.float64)


def hard(labels: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), k).double()[None]


def clique(nodes: range) -> list[tuple[int, int]]:
    return [(i, j) for i in nodes for j in nodes if i < j]


def test_dense_adjacency_is_binary_symmetric_and_loop_free() -> None:
    # one direction only, a duplicate (two periodic images) and a self-image edge
    index = torch.tensor([[0, 0, 1, 2, 3], [1, 1, 2, 2, 4]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    adj = dense_adjacency(index, batch, 2, 3, torch.float32)
    expected = torch.zeros(2, 3, 3)
    expected[0, 0, 1] = expected[0, 1, 0] = expected[0, 1, 2] = expected[0, 2, 1] = 1
    expected[1, 0, 1] = expected[1, 1, 0] = 1  # graph 1's atoms 3, 4 are its local 0, 1
    assert torch.equal(adj, expected)


def test_two_disconnected_cliques_with_the_ideal_assignment() -> None:
    adj = adjacency(clique(range(4)) + clique(range(4, 8)), 8)
    s = hard([0, 0, 0, 0, 1, 1, 1, 1], 2)
    assert normalized_cut(s, adj).item() == pytest.approx(-1.0)
    assert orthogonality(s).item() == pytest.approx(0.0, abs=1e-12)
    motif = motif_adjacency(adj)
    assert torch.equal(motif, 2 * adj)  # every edge of a 4-clique is in 2 triangles
    assert normalized_cut(s, motif).item() == pytest.approx(-1.0)
    # a bridge 3-4: within-cluster weight 2 * 12 over volume 2 * 13 (hand count)
    bridged = adjacency(clique(range(4)) + clique(range(4, 8)) + [(3, 4)], 8)
    assert normalized_cut(s, bridged).item() == pytest.approx(-12 / 13)
    # the bridge is in no triangle: the motif term keeps its optimum
    assert normalized_cut(s, motif_adjacency(bridged)).item() == pytest.approx(-1.0)
    # unequal clusters are not orthogonal-optimal: S^T S = diag(5, 3)
    uneven = hard([0, 0, 0, 0, 0, 1, 1, 1], 2)
    expected = math.hypot(5 / math.hypot(5, 3) - 2**-0.5, 3 / math.hypot(5, 3) - 2**-0.5)
    assert orthogonality(uneven).item() == pytest.approx(expected)


def test_triangle_free_graphs_give_a_zero_not_nan_higher_order_term() -> None:
    path = adjacency([(0, 1), (1, 2), (2, 3)], 4)
    motif = motif_adjacency(path)
    assert not bool(motif.any())  # no triangle in a path (or any bipartite graph)
    s = hard([0, 0, 1, 1], 2).requires_grad_(True)
    assert normalized_cut(s, path).item() == pytest.approx(-2 / 3)  # within 2*2 over volume 6
    ho = normalized_cut(s, motif)
    assert ho.item() == 0.0  # 0/0 is defined as 0: no triangle, nothing to cut
    ho.sum().backward()
    assert s.grad is not None and bool((s.grad == 0).all())
    # a graph with no edges at all (a single atom) has a zero first-order term too
    lone = adjacency([], 1)
    assert normalized_cut(hard([0], 2), lone).item() == 0.0


def test_head_on_a_triangle_free_graph_is_finite_with_finite_gradients() -> None:
    torch.manual_seed(0)
    head = PoolingEnergyHead(8, clusters=2, mixing=0.3).double()
    h = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])  # a path of 4 atoms, then a triangle
    edges = torch.tensor([[0, 1, 2, 4, 5, 4], [1, 2, 3, 5, 6, 6]])
    out = head(h, batch, 2, edges)
    assert out.mincut_ho[0].item() == 0.0 and out.mincut_ho[1].item() < 0
    per_graph = 0.3 * out.mincut + 0.7 * out.mincut_ho + out.ortho
    assert out.aux_loss.item() == pytest.approx(per_graph.mean().item())
    (out.aux_loss + out.energy.sum()).backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all())


def test_assignment_rows_sum_to_one_and_terms_are_bounded() -> None:
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling", pool_clusters=3).double().eval()
    graph = Graph.from_data(Batch.from_data_list(real_graphs()))
    _, h = model.backbone(graph)
    out = model.energy(h, graph.batch, graph.num_graphs, graph.edge_index)
    assert out.assignment.shape == (261, 3)
    assert torch.allclose(out.assignment.sum(-1), torch.ones(261, dtype=torch.float64))
    assert bool((out.assignment >= 0).all())
    for term in (out.mincut, out.mincut_ho):
        assert bool((term >= -1 - 1e-12).all() and (term <= 0).all())
    assert bool((out.ortho >= 0).all())


def test_energy_and_losses_are_invariant_to_atom_and_edge_order() -> None:
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling").double().eval()
    graphs = real_graphs()
    before = model(Batch.from_data_list(graphs))
    after = model(Batch.from_data_list([permuted(g, seed) for seed, g in enumerate(graphs)]))
    assert set(before) == {"energy", "aux_loss", "pool_mincut", "pool_mincut_ho", "pool_ortho"}
    for key, value in before.items():
        assert torch.allclose(value, after[key], atol=1e-10), key


def test_a_batch_gives_each_graph_its_own_energy_and_terms() -> None:
    # padded atoms of the dense batch must not reach the energies or the losses; the aux loss
    # of a batch is the mean of its graphs' aux losses (each graph counts once)
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling").double().eval()
    graphs = real_graphs()
    graph = Graph.from_data(Batch.from_data_list(graphs))
    _, h = model.backbone(graph)
    together = model.energy(h, graph.batch, graph.num_graphs, graph.edge_index)
    for i, g in enumerate(graphs):
        single = Graph.from_data(Batch.from_data_list([g]))
        _, h_single = model.backbone(single)
        alone = model.energy(h_single, single.batch, 1, single.edge_index)
        for key in ("energy", "mincut", "mincut_ho", "ortho"):
            assert getattr(together, key)[i].item() == pytest.approx(
                getattr(alone, key).item(), rel=1e-10, abs=1e-10
            ), key
    alone_losses = [model(Batch.from_data_list([g]))["aux_loss"] for g in graphs]
    assert model(Batch.from_data_list(graphs))["aux_loss"].item() == pytest.approx(
        torch.stack(alone_losses).mean().item(), rel=1e-10
    )


def test_one_cluster_is_the_sum_of_the_atoms() -> None:
    # K = 1: every atom in the one cluster, the cut keeps everything (-1), S^T S is 1x1 (ortho 0)
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling", pool_clusters=1).double().eval()
    data = Batch.from_data_list(real_graphs())
    graph = Graph.from_data(data)
    _, h = model.backbone(graph)
    summed = torch.zeros(3, 16, dtype=torch.float64).index_add_(0, graph.batch, h)
    out = model(data)
    assert torch.allclose(out["energy"], model.energy.cluster_energy(summed).squeeze(-1))
    assert out["pool_mincut"].item() == pytest.approx(-1.0)
    assert out["pool_mincut_ho"].item() == pytest.approx(-1.0)
    assert out["pool_ortho"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["aux_loss"].item() == pytest.approx(-1.0)


def test_aux_loss_trains_the_assignment_mlp_only() -> None:
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling")
    out = model(Batch.from_data_list(real_graphs(double=False)[:2]))
    out["aux_loss"].backward(retain_graph=True)
    head = model.energy
    assert isinstance(head, PoolingEnergyHead)
    for p in head.assign.parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0
    assert all(p.grad is None for p in head.cluster_energy.parameters())  # energy side only
    assert float(model.backbone.schnet.interactions[0].lin.weight.grad.abs().max()) > 0
    head.zero_grad(set_to_none=True)
    out["energy"].sum().backward()  # the energy also reaches the assignment
    assert float(head.assign[0].weight.grad.abs().max()) > 0


def test_pooling_with_gradient_forces_matches_finite_differences() -> None:
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, energy_head="pooling", force_head="gradient").double().eval()
    data = Batch.from_data_list(real_graphs()[2:])
    out = model(data)
    atom, axis, step = 5, 0, 1e-5
    finite = central_difference_force(model, data, atom, axis, graph=0, step=step)
    assert out["forces"][atom, axis].item() == pytest.approx(finite, rel=1e-5, abs=1e-8)


def test_other_heads_return_no_aux_loss() -> None:
    data = Batch.from_data_list(real_graphs()[2:])
    for kind in ("sum", "mean", "weighted_initial", "weighted_final"):
        assert set(CatalystModel(**SMALL, energy_head=kind).double()(data)) == {"energy"}


def test_bad_pooling_arguments_name_the_argument_and_the_fix() -> None:
    for clusters in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=r"pool_clusters must be an integer >= 1.*use e\.g\."):
            PoolingEnergyHead(16, clusters=clusters)  # type: ignore[arg-type]
    for mixing in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"pool_mixing .* must be in \[0, 1\].*use 1 for"):
            PoolingEnergyHead(16, mixing=mixing)
    with pytest.raises(ValueError, match="pool_clusters"):
        CatalystModel(**SMALL, energy_head="pooling", pool_clusters=0)
    with pytest.raises(ValueError, match=r"energy head must be .*pooling \(argument energy_head\)"):
        CatalystModel(**SMALL, energy_head="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="energy_head='pooling' is implemented for ads_cat"):
        CatalystModel(**SMALL, energy_head="pooling", ads_cat="attention")
    with pytest.raises(ValueError, match="frame_averaging='none'"):
        CatalystModel(**SMALL, energy_head="pooling", frame_averaging="2D")
    with pytest.raises(ValueError, match="build PoolingEnergyHead"):
        EnergyHead(16, "pooling")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_uniform_and_collapsed_assignments_are_equally_non_orthogonal(k: int) -> None:
    # the two trivial solutions score the same, sqrt(2 - 2 / sqrt(K)); on a complete graph both
    # also reach the cut's optimum -1, which is why the generated OC20 graphs give uniform S
    complete = adjacency(clique(range(6)), 6)
    uniform = torch.full((1, 6, k), 1 / k, dtype=torch.float64)
    collapsed = hard([0] * 6, k)
    for s in (uniform, collapsed):
        assert orthogonality(s).item() == pytest.approx(math.sqrt(2 - 2 / math.sqrt(k)))
        assert normalized_cut(s, complete).item() == pytest.approx(-1.0)
        assert normalized_cut(s, motif_adjacency(complete)).item() == pytest.approx(-1.0)


def test_a_hard_split_of_a_complete_graph_scores_worse_than_the_trivial_solutions() -> None:
    # the +0.19 example of docs/oc20.md: 6 atoms in clusters of 2, 2, 1, 1 (K = 4)
    complete = adjacency(clique(range(6)), 6)
    split = hard([0, 0, 1, 1, 2, 3], 4)
    cut = -(2 + 2) / (6 * 5)  # ordered within-cluster pairs over the volume
    assert normalized_cut(split, complete).item() == pytest.approx(cut)
    assert normalized_cut(split, motif_adjacency(complete)).item() == pytest.approx(cut)
    ortho = math.sqrt(2 * (2 / math.sqrt(10) - 0.5) ** 2 + 2 * (1 / math.sqrt(10) - 0.5) ** 2)
    assert orthogonality(split).item() == pytest.approx(ortho)
    assert cut + ortho == pytest.approx(0.187, abs=1e-3)  # > 0, the trivial solutions' total
