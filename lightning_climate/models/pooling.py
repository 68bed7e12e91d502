"""Graph-pooling energy head: PhAST's ``hoscpool`` ablation, in plain torch.

Per graph, a small MLP with a softmax soft-assigns the atoms to ``K`` clusters (``S``, N x K, rows
sum to 1). The cluster embeddings are ``S^T H`` and the energy is the sum over clusters of an MLP
of each cluster embedding, so it stays a sum (extensive) quantity and is invariant to the order of
the atoms.

Unsupervised regularisers on ``S``, after HoscPool (Duval & Malliaros, 2022), computed per graph:

- first-order normalised min-cut ``-Tr(S^T A S) / Tr(S^T D S)`` (in [-1, 0]; -1 when no edge
  crosses clusters);
- higher-order (triangle-motif) min-cut, the same ratio on the motif adjacency
  ``A_M = (A A) * A`` whose entry (i, j) counts the triangles through edge (i, j);
- orthogonality ``|| S^T S / ||S^T S||_F - I / sqrt(K) ||_F`` (0 for equal-size hard clusters),
  which keeps the assignment from collapsing into one cluster.

The auxiliary loss is ``mixing * mincut + (1 - mixing) * mincut_ho + ortho``, averaged over the
graphs of the batch (each graph counts once, whatever its atom count, so a batch gives the mean
of its graphs' values and DDP's gradient averaging matches one process on the whole batch).

Adjacency: the radius-graph edges the backbone used (after any rewiring), made **binary,
symmetric and loop-free**: ``A_ij = 1`` when atoms i and j are joined by at least one edge in
either direction, through any periodic image. Binary, not distance-weighted, because the motif
adjacency then counts triangles of mutually neighbouring atoms, and the periodic duplicates and
OC20's nearest-50 truncation (which makes the edge list asymmetric) cannot skew the weights.

A ratio whose denominator is 0 (a graph without edges for the first-order term, or without
triangles, e.g. a path or any bipartite graph, for the higher-order one) is 0/0; we set that term
to 0 for the graph: it is a constant, so it adds no gradient and no NaN.

PyG's ``dense_mincut_pool`` computes the same first-order and orthogonality terms, but only as
batch means, returns NaN on such 0/0 graphs and builds a coarsened adjacency we do not need;
the few lines below keep the per-graph values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import to_dense_adj, to_dense_batch

from lightning_climate.models.heads import mlp

__all__ = [
    "PoolingEnergyHead",
    "PoolingOutput",
    "check_pooling_arguments",
    "dense_adjacency",
    "motif_adjacency",
    "normalized_cut",
    "orthogonality",
]


def check_pooling_arguments(clusters: int, mixing: float) -> None:
    """Raise a ``ValueError`` naming the argument and the fix for bad pooling settings."""
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(
            f"pool_clusters must be an integer >= 1 (the number of clusters per graph), got "
            f"{clusters!r}; use e.g. pool_clusters=4."
        )
    if not 0.0 <= float(mixing) <= 1.0:  # also refuses NaN
        raise ValueError(
            f"pool_mixing weighs the first-order against the higher-order min-cut and must be in "
            f"[0, 1], got {mixing!r}; use 1 for first order only, 0 for triangles only."
        )


def dense_adjacency(
    edge_index: Tensor, batch: Tensor, num_graphs: int, num_nodes: int, dtype: torch.dtype
) -> Tensor:
    """Binary, symmetric, loop-free adjacency (B, N, N) of each graph of a batch.

    Args:
        edge_index: (2, E) edges of the batch, within graphs (any direction, duplicates allowed).
        batch: (N_total,) sorted graph index of each atom.
        num_graphs: B.
        num_nodes: N, the padded atom count per graph.
        dtype: floating dtype of the result.
    """
    adj = to_dense_adj(edge_index, batch, max_num_nodes=num_nodes, batch_size=num_graphs)
    adj = ((adj + adj.transpose(1, 2)) > 0).to(dtype)
    adj.diagonal(dim1=1, dim2=2).zero_()  # an atom next to its own periodic image is no edge
    return adj


def motif_adjacency(adj: Tensor) -> Tensor:
    """Triangle-motif adjacency ``(A A) * A``: entry (i, j) counts the triangles through (i, j)."""
    return (adj @ adj) * adj


def normalized_cut(s: Tensor, adj: Tensor) -> Tensor:
    """Per-graph ``-Tr(S^T A S) / Tr(S^T D S)`` with ``D`` the degrees of ``A``; 0 where 0/0.

    Args:
        s: (B, N, K) assignments, zero on padded atoms.
        adj: (B, N, N) symmetric adjacency, zero on padded atoms.
    """
    within = (s * (adj @ s)).sum(dim=(1, 2))
    volume = (adj.sum(-1, keepdim=True) * s * s).sum(dim=(1, 2))
    defined = volume > 0
    ratio = within / torch.where(defined, volume, torch.ones_like(volume))
    return torch.where(defined, -ratio, torch.zeros_like(ratio))


def orthogonality(s: Tensor) -> Tensor:
    """Per-graph ``|| S^T S / ||S^T S||_F - I / sqrt(K) ||_F``; 0 for a graph without atoms."""
    gram = s.transpose(1, 2) @ s
    norm = torch.linalg.matrix_norm(gram, keepdim=True)
    defined = norm > 0
    gram = gram / torch.where(defined, norm, torch.ones_like(norm))
    k = s.shape[-1]
    eye = torch.eye(k, dtype=s.dtype, device=s.device) / math.sqrt(k)
    return torch.linalg.matrix_norm(gram - eye) * defined.reshape(-1)


@dataclass
class PoolingOutput:
    """What :class:`PoolingEnergyHead` returns.

    Attributes:
        energy: (B,) energies.
        assignment: (N_total, K) soft assignment of every atom (rows sum to 1).
        mincut: (B,) first-order normalised cut term per graph.
        mincut_ho: (B,) triangle-motif normalised cut term per graph.
        ortho: (B,) orthogonality term per graph.
        aux_loss: scalar regulariser, the per-graph mix averaged over graphs.
    """

    energy: Tensor
    assignment: Tensor
    mincut: Tensor
    mincut_ho: Tensor
    ortho: Tensor
    aux_loss: Tensor

    def losses(self) -> dict[str, Tensor]:
        """Batch means for the model's output dict: ``aux_loss`` and ``pool_*`` terms."""
        return {
            "aux_loss": self.aux_loss,
            "pool_mincut": self.mincut.mean(),
            "pool_mincut_ho": self.mincut_ho.mean(),
            "pool_ortho": self.ortho.mean(),
        }


class PoolingEnergyHead(nn.Module):
    """Energy from soft cluster pooling of the final atom features (see the module docstring).

    Args:
        hidden_channels: width of the atom representations.
        clusters: ``K``, clusters per graph (>= 1).
        mixing: weight of the first-order min-cut against the triangle-motif one, in [0, 1].
    """

    def __init__(self, hidden_channels: int, clusters: int = 4, mixing: float = 0.5) -> None:
        super().__init__()
        check_pooling_arguments(clusters, mixing)
        self.clusters = clusters
        self.mixing = float(mixing)
        self.assign = mlp(hidden_channels, clusters)
        self.cluster_energy = mlp(hidden_channels, 1)

    def forward(
        self, h: Tensor, batch: Tensor, num_graphs: int, edge_index: Tensor
    ) -> PoolingOutput:
        """Pool the atoms of each graph and predict its energy.

        Args:
            h: (N_total, hidden) final atom features.
            batch: (N_total,) sorted graph index of each atom.
            num_graphs: B.
            edge_index: (2, E) radius-graph edges of the batch (used as the adjacency).
        """
        assignment = torch.softmax(self.assign(h), dim=-1)
        h_dense, mask = to_dense_batch(h, batch, batch_size=num_graphs)
        s, _ = to_dense_batch(assignment, batch, batch_size=num_graphs)  # padded rows are 0
        pooled = s.transpose(1, 2) @ h_dense  # (B, K, hidden)
        has_atoms = mask.any(dim=1).to(h.dtype)
        energy = self.cluster_energy(pooled).squeeze(-1).sum(-1) * has_atoms
        with torch.no_grad():
            adj = dense_adjacency(edge_index, batch, num_graphs, mask.shape[1], h.dtype)
            motif = motif_adjacency(adj)
        mincut, mincut_ho, ortho = (
            normalized_cut(s, adj),
            normalized_cut(s, motif),
            orthogonality(s),
        )
        per_graph = self.mixing * mincut + (1.0 - self.mixing) * mincut_ho + ortho
        return PoolingOutput(energy, assignment, mincut, mincut_ho, ortho, per_graph.mean())
