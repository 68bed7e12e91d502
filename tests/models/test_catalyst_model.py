from __future__ import annotations

import pytest
import torch
from conftest import OC20_SAMPLE, central_difference_force, z_rotation
from torch_geometric.data import Batch
from torch_geometric.nn.models import SchNet

from lightning_climate.datasets.oc20 import entry_to_data, read_npz_batch
from lightning_climate.models import CatalystModel, PhysEmbedding, SchNetBackbone
from lightning_climate.models.catalyst import bipartite_edges
from lightning_climate.models.embedding import element_properties
from lightning_climate.models.frame_averaging import frame_rotations
from lightning_climate.models.schnet import Graph
from lightning_climate.transforms import RadiusGraphPBC, RemoveAdsorbateCatalystEdges

SMALL = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 12}


def real_batch(double: bool = False) -> Batch:
    graphs = [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(OC20_SAMPLE))]
    batch = Batch.from_data_list(graphs)
    if double:
        batch.pos, batch.cell = batch.pos.double(), batch.cell.double()
    return batch


def test_element_table_and_embedding_sizes() -> None:
    names, props, period, group = element_properties(85)
    assert props.shape[0] == 85 and not bool(props.isnan().any())
    assert bool((props[0] == 0).all()) and period[0] == 0 and group[0] == 0
    assert (period[78].item(), group[78].item()) == (6, 10)  # Pt
    assert group[64].item() == 19 and group[57].item() == 3  # Gd is a lanthanide, La group 3
    assert "atomic_mass" in names and "covalent_radius" in names
    # z-scored columns over Z = 1..84 (before the NaN fill)
    assert abs(float(props[1:, names.index("atomic_mass")].mean())) < 1e-6
    emb = PhysEmbedding()
    assert emb.out_channels == 32 * 4 + len(names)
    out = emb(torch.tensor([[1, 78], [84, 8]]), torch.tensor([[2, 1], [0, 2]]))
    assert out.shape == (2, 2, emb.out_channels)
    with pytest.raises(ValueError, match="outside the embedding table"):
        emb(torch.tensor([85]), torch.tensor([0]))
    with pytest.raises(ValueError, match="pass the OC20 `tags`"):
        emb(torch.tensor([1]))
    with pytest.raises(ValueError, match="every part"):
        PhysEmbedding(0, 0, 0, 0, properties=False)


def test_backbone_equals_pyg_schnet_fed_the_same_graph() -> None:
    torch.manual_seed(0)
    backbone = SchNetBackbone(**SMALL, cutoff=6.0)
    data = real_batch()
    graph = Graph.from_data(data)
    _, ours = backbone(graph)
    dist, _ = backbone.edge_features(graph)

    class StoredGraph:  # PyG's SchNet with our periodic edges as its interaction graph
        def __call__(self, pos, batch):
            return data.edge_index, dist

    reference = SchNet(16, 16, 2, 12, 6.0, interaction_graph=StoredGraph())
    # the backbone dropped the readout MLP it never uses; the rest are PyG's own weights
    missing, unexpected = reference.load_state_dict(backbone.schnet.state_dict(), strict=False)
    assert sorted(missing) == ["lin1.bias", "lin1.weight", "lin2.bias", "lin2.weight"]
    assert unexpected == []
    features = []
    reference.lin1.register_forward_hook(lambda module, args, out: features.append(args[0]))
    reference(data.atomic_numbers, data.pos, data.batch)
    assert torch.allclose(ours, features[0], atol=1e-5)


def test_gradient_forces_are_minus_the_energy_gradient() -> None:
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, force_head="gradient").double().eval()
    data = real_batch(double=True)
    out = model(data)
    atom, axis, step = 70, 2, 1e-5
    finite = central_difference_force(model, data, atom, axis, graph=1, step=step)
    assert out["forces"][atom, axis].item() == pytest.approx(finite, rel=1e-5, abs=1e-8)


def test_energy_is_invariant_to_rotation_and_translation() -> None:
    torch.manual_seed(0)
    model = (
        CatalystModel(**SMALL, phast_embedding=True, energy_head="weighted_final").double().eval()
    )
    data = real_batch(double=True)
    rot = z_rotation(0.7)
    moved = data.clone()
    moved.pos = data.pos @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    moved.cell = data.cell @ rot.T
    assert torch.allclose(model(data)["energy"], model(moved)["energy"], atol=1e-8)


@pytest.mark.parametrize("ads_cat", ["none", "separate_pooling", "independent", "attention"])
def test_graphs_do_not_leak_into_each_other(ads_cat: str) -> None:
    # the reference code's `batch * mask` scatter sends atoms of every graph into graph 0;
    # per-(graph, part) pooling must give each graph the energy it has alone
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, ads_cat=ads_cat).eval()
    data = real_batch()
    together = model(data)["energy"]
    alone = torch.cat([model(Batch.from_data_list([g]))["energy"] for g in data.to_data_list()])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("ads_cat", ["independent", "attention"])
def test_disconnected_variants_ignore_lateral_adsorbate_position(ads_cat: str) -> None:
    # with adsorbate-catalyst edges removed, these variants see only the adsorbate's own
    # geometry and the catalyst atoms' heights: sliding the adsorbate sideways changes nothing
    torch.manual_seed(0)
    model = CatalystModel(**SMALL, ads_cat=ads_cat).eval()
    data = RemoveAdsorbateCatalystEdges()(real_batch())
    moved = data.clone()
    moved.pos = data.pos.clone()
    moved.pos[data.tags == 2, :2] += torch.tensor([0.4, -0.3])
    assert torch.allclose(model(data)["energy"], model(moved)["energy"], atol=1e-5)
    full = real_batch()
    shifted = full.clone()
    shifted.pos = full.pos.clone()
    shifted.pos[full.tags == 2, :2] += torch.tensor([0.4, -0.3])
    plain = CatalystModel(**SMALL).eval()
    assert not torch.allclose(plain(full)["energy"], plain(shifted)["energy"], atol=1e-5)


def test_bipartite_edges_are_all_pairs_within_each_graph() -> None:
    src_batch = torch.tensor([0, 0, 1, 2, 2, 2])
    dst_batch = torch.tensor([0, 1, 1, 2])
    edges = bipartite_edges(src_batch, dst_batch, 3)
    expected = {(s, d) for s in range(6) for d in range(4) if src_batch[s] == dst_batch[d]}
    assert set(map(tuple, edges.T.tolist())) == expected and edges.shape[1] == len(expected)


def test_heads_shapes_and_errors() -> None:
    data = RadiusGraphPBC()(real_batch())
    direct = CatalystModel(**SMALL, force_head="direct")(data)
    assert direct["forces"].shape == (261, 3) and direct["energy"].shape == (3,)
    mixed = CatalystModel(**SMALL, force_head="mixed", energy_head="weighted_initial")(data)
    assert mixed["forces_gradient"].shape == (261, 3)
    assert not torch.allclose(mixed["forces"], mixed["forces_gradient"])
    mean = CatalystModel(**SMALL, energy_head="mean").eval()
    assert mean(data)["energy"].shape == (3,)
    with pytest.raises(ValueError, match="IS2RE"):
        CatalystModel(force_head="gradient", ads_cat="attention")
    with pytest.raises(ValueError, match="energy head must be"):
        CatalystModel(energy_head="max")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        CatalystModel(**SMALL, force_head="gradient")(data)
    del data.cell_offsets
    with pytest.raises(KeyError, match="RadiusGraphPBC"):
        CatalystModel(**SMALL)(data)


@pytest.mark.parametrize(
    ("mode", "se3", "count"), [("3D", False, 8), ("3D", True, 4), ("2D", False, 4), ("2D", True, 2)]
)
def test_frame_counts_and_orthogonality(mode: str, se3: bool, count: int) -> None:
    data = real_batch(double=True)
    frames, centroid = frame_rotations(data.pos, data.batch, 3, mode, se3)
    assert frames.shape == (count, 3, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    assert torch.allclose(frames.transpose(-1, -2) @ frames, eye.expand_as(frames), atol=1e-10)
    if se3:
        assert torch.allclose(torch.linalg.det(frames), torch.ones(count, 3, dtype=torch.float64))
    if mode == "2D":  # z is kept
        assert torch.allclose(frames[..., 2, 2], torch.ones(count, 3, dtype=torch.float64))
    assert torch.allclose(centroid[0], data.pos[:65].mean(0))


@pytest.mark.parametrize("mode", ["2D", "3D"])
def test_frame_averaging_makes_a_vector_model_invariant(mode: str) -> None:
    torch.manual_seed(0)
    data = real_batch(double=True)
    rot = z_rotation(0.9)
    moved = data.clone()
    moved.pos, moved.cell = data.pos @ rot.T + 1.0, data.cell @ rot.T
    averaged = CatalystModel(**SMALL, frame_averaging=mode, force_head="direct").double().eval()
    a, b = averaged(data), averaged(moved)
    assert torch.allclose(a["energy"], b["energy"], atol=1e-10)
    assert torch.allclose(a["forces"] @ rot.T, b["forces"], atol=1e-10)  # equivariant forces
    # the same model without averaging is not invariant (it sees raw edge vectors)
    raw = CatalystModel(**SMALL).double().eval()
    raw.backbone.vector = torch.nn.Linear(3, SMALL["num_gaussians"]).double()
    assert not torch.allclose(raw(data)["energy"], raw(moved)["energy"], atol=1e-4)
    with pytest.raises(ValueError, match="frame_averaging must be"):
        CatalystModel(frame_averaging="4D")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"phast_embedding": True, "energy_head": "weighted_initial"},
        {"phast_embedding": True, "energy_head": "weighted_final", "force_head": "direct"},
        {"energy_head": "pooling", "force_head": "mixed"},
        {"ads_cat": "separate_pooling"},
        {"ads_cat": "independent"},
        {"ads_cat": "attention"},
        {"frame_averaging": "2D"},
        {"backbone": "dimenet++", "num_interactions": 1},
    ],
    ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default",
)
def test_every_parameter_gets_a_gradient(config: dict[str, object]) -> None:
    """Unused parameters make DDP fail (find_unused_parameters=False is Lightning's default)."""
    torch.manual_seed(0)
    model = CatalystModel(**{**SMALL, **config}).train()
    data = RemoveAdsorbateCatalystEdges()(real_batch()) if "ads_cat" in config else real_batch()
    out = model(data)
    loss = out["energy"].sum()
    for key in ("forces", "forces_gradient", "aux_loss"):
        if key in out:
            loss = loss + out[key].sum()
    loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []
