"""SchNet on periodic OC20 graphs, built from PyG's SchNet blocks.

PyG's ``SchNet.forward`` builds its own (non-periodic) radius graph with ``pyg-lib``, which is not
installable from PyPI. We keep PyG's modules (embedding, Gaussian smearing, interaction blocks) and
feed them our edges: distances are recomputed from ``pos`` and the integer cell offsets, so they
are periodic and differentiable (gradient forces).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn.models import SchNet

from lightning_climate.models.embedding import PhysEmbedding
from lightning_climate.transforms.pbc import edge_vectors, graph_ptr

__all__ = ["Graph", "SchNetBackbone"]


@dataclass
class Graph:
    """The tensors a backbone needs, detached from the PyG container so parts can be cut out.

    ``edge_index`` row 0 is the neighbour, row 1 the centre; ``cell`` is (B, 3, 3).
    """

    z: Tensor
    tags: Tensor
    pos: Tensor
    batch: Tensor
    cell: Tensor
    edge_index: Tensor
    cell_offsets: Tensor
    num_graphs: int

    @classmethod
    def from_data(cls, data: Data, pos: Tensor | None = None) -> Graph:
        """Read a ``Data``/``Batch``; ``pos`` replaces ``data.pos`` (e.g. one requiring grad)."""
        missing = [
            k for k in ("edge_index", "cell_offsets", "cell") if getattr(data, k, None) is None
        ]
        if missing:
            raise KeyError(
                f"the graph lacks {missing}; use OC20 files with edges or add RadiusGraphPBC "
                "(OC20DataModule(recompute_graph=True))."
            )
        ptr = graph_ptr(data)
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)
        tags = getattr(data, "tags", None)
        return cls(
            z=data.atomic_numbers.long(),
            tags=tags if tags is not None else torch.ones_like(data.atomic_numbers).long(),
            pos=data.pos if pos is None else pos,
            batch=batch,
            cell=data.cell.reshape(-1, 3, 3),
            edge_index=data.edge_index,
            cell_offsets=data.cell_offsets,
            num_graphs=ptr.numel() - 1,
        )

    def subgraph(self, mask: Tensor) -> Graph:
        """Atoms where ``mask`` holds and the edges among them, re-indexed."""
        new_index = torch.full_like(self.z, -1)
        new_index[mask] = torch.arange(int(mask.sum()), device=mask.device)
        keep = mask[self.edge_index].all(dim=0)
        return Graph(
            z=self.z[mask],
            tags=self.tags[mask],
            pos=self.pos[mask],
            batch=self.batch[mask],
            cell=self.cell,
            edge_index=new_index[self.edge_index[:, keep]],
            cell_offsets=self.cell_offsets[keep],
            num_graphs=self.num_graphs,
        )


def _no_radius_graph(pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    raise RuntimeError(
        "SchNetBackbone supplies its own periodic edges; do not call SchNet.forward."
    )


class SchNetBackbone(nn.Module):
    """SchNet interactions (PyG modules) on periodic edges; returns per-atom features.

    Args:
        hidden_channels: width of the atom features.
        num_filters: width of the continuous filters.
        num_interactions: interaction blocks.
        num_gaussians: radial basis size.
        cutoff: cosine cutoff radius (Å) of the filters.
        phast_embedding: use :class:`PhysEmbedding` (Z, tag, period, group, properties) projected
            to ``hidden_channels`` instead of SchNet's Z embedding.
        vector_features: add a linear map of the raw edge vector to the filter input, as FAENet
            does; the model is then no longer rotation invariant and needs frame averaging.
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        cutoff: float = 6.0,
        phast_embedding: bool = False,
        vector_features: bool = False,
    ) -> None:
        super().__init__()
        self.schnet = SchNet(
            hidden_channels,
            num_filters,
            num_interactions,
            num_gaussians,
            cutoff,
            interaction_graph=_no_radius_graph,
        )
        # SchNet's readout MLP (and its Z embedding, when PhAST's replaces it) are never called:
        # our heads read the per-atom features. Unused parameters would make DDP fail.
        del self.schnet.lin1, self.schnet.lin2
        if phast_embedding:
            del self.schnet.embedding
        self.phys = PhysEmbedding(final_proj_size=hidden_channels) if phast_embedding else None
        self.vector = nn.Linear(3, num_gaussians) if vector_features else None
        self.hidden_channels = hidden_channels
        self.num_layers = num_interactions

    def embed(self, graph: Graph) -> Tensor:
        """Initial atom features (N, hidden)."""
        if self.phys is not None:
            return self.phys(graph.z, graph.tags)
        if bool((graph.z >= self.schnet.embedding.num_embeddings).any()):
            raise ValueError(
                f"atomic numbers above {self.schnet.embedding.num_embeddings - 1} cannot be embedded."
            )
        return self.schnet.embedding(graph.z)

    def edge_features(self, graph: Graph) -> tuple[Tensor, Tensor]:
        """Periodic, differentiable edge lengths and their Gaussian expansion."""
        vec, dist = edge_vectors(
            graph.pos, graph.cell, graph.edge_index, graph.cell_offsets, graph.batch
        )
        features = self.schnet.distance_expansion(dist)
        if self.vector is not None:
            features = features + self.vector(vec)
        return dist, features

    def interact(self, k: int, h: Tensor, graph: Graph, dist: Tensor, rbf: Tensor) -> Tensor:
        """Apply interaction block ``k`` with its residual."""
        return h + self.schnet.interactions[k](h, graph.edge_index, dist, rbf)

    def forward(self, graph: Graph) -> tuple[Tensor, Tensor]:
        """Initial and final atom features, both (N, hidden)."""
        h0 = self.embed(graph)
        dist, rbf = self.edge_features(graph)
        h = h0
        for k in range(self.num_layers):
            h = self.interact(k, h, graph, dist, rbf)
        return h0, h
