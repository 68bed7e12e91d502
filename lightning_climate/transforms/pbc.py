"""Radius graphs under periodic boundary conditions, with OC20's conventions.

PyG's ``radius_graph`` needs ``pyg-lib`` (not on PyPI) and knows nothing of periodic cells, so the
neighbour search is delegated to ``vesin-torch`` (exact full neighbour lists, any cell shape, cutoffs
larger than the cell). On top of it we apply what OC20 models expect:

- ``edge_index[0]`` is the neighbour ``j`` (source), ``edge_index[1]`` the centre ``i`` (target);
- ``cell_offsets[e]`` is the integer image of ``j``: ``vec_e = pos[j] + cell_offsets[e] @ cell - pos[i]``;
- each centre keeps its ``max_neighbors`` nearest neighbours (exact ties keep vesin's order, which
  is deterministic); the graph is therefore not symmetric. Edges come sorted by centre, then
  distance;
- ``distances`` are recomputed in torch from ``pos`` and the offsets, so they carry gradients for
  forces computed as ``-dE/dpos``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from lightning_climate.utils import lazy_import

__all__ = ["RadiusGraphPBC", "edge_vectors", "graph_ptr", "radius_graph_pbc"]


def graph_ptr(data: Data) -> Tensor:
    """Atom offsets ``[0, n_0, n_0 + n_1, ...]`` of a ``Batch`` or of a single ``Data``."""
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return ptr
    return torch.tensor([0, data.pos.shape[0]], device=data.pos.device)


def edge_vectors(
    pos: Tensor, cell: Tensor, edge_index: Tensor, cell_offsets: Tensor, batch: Tensor
) -> tuple[Tensor, Tensor]:
    """Differentiable edge vectors ``pos[j] + offsets @ cell[g] - pos[i]`` and their lengths.

    The cell of each edge is taken from the graph of its centre ``i``, which stays right after any
    rewiring (no per-graph edge counts are needed).

    Args:
        pos: (N, 3) positions.
        cell: (B, 3, 3) cells, rows are lattice vectors.
        edge_index: (2, E), row 0 neighbour, row 1 centre.
        cell_offsets: (E, 3) integer images of the neighbours.
        batch: (N,) graph of each atom.
    """
    j, i = edge_index
    offsets, cell = cell_offsets.to(pos.dtype), cell.to(pos.dtype)
    if cell.shape[0] == 1:  # one system: a single matrix product
        shift = offsets @ cell[0]
    else:
        shift = (offsets.unsqueeze(-1) * cell[batch[i]]).sum(1)
    vec = pos[j] + shift - pos[i]
    return vec, vec.norm(dim=-1)


def radius_graph_pbc(
    pos: Tensor,
    cell: Tensor,
    ptr: Tensor,
    cutoff: float = 6.0,
    max_neighbors: int | None = 50,
    pbc: Sequence[bool] = (True, True, True),
) -> tuple[Tensor, Tensor, Tensor]:
    """Periodic radius graph of a batch of systems, OC20 conventions (see the module docstring).

    Args:
        pos: (N, 3) positions in Å of all systems, concatenated.
        cell: (B, 3, 3) (or (3, 3) for one system) cells, rows are lattice vectors.
        ptr: (B + 1,) atom offsets of the systems.
        cutoff: neighbours at most this far (Å) are kept; zero distances never are.
        max_neighbors: nearest neighbours kept per centre, ``None`` for all.
        pbc: periodicity along each lattice vector.

    Returns:
        ``edge_index`` (2, E) with global atom indices, ``cell_offsets`` (E, 3) long and
        ``distances`` (E,) (differentiable in ``pos``).

    Raises:
        ValueError: a cell of zero volume along periodic directions, or a bad argument.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive (Å), got {cutoff}.")
    if max_neighbors is not None and max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1 or None, got {max_neighbors}.")
    vesin = lazy_import("vesin_torch")
    cell = cell.reshape(-1, 3, 3)
    if cell.shape[0] != ptr.numel() - 1:
        raise ValueError(f"got {cell.shape[0]} cells for {ptr.numel() - 1} systems.")
    periodic = torch.tensor(list(pbc), dtype=torch.bool)
    neighbor_list = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    edges, offsets, lengths = [], [], []
    for g in range(cell.shape[0]):
        start, stop = int(ptr[g]), int(ptr[g + 1])
        box = cell[g].detach().to(torch.float64).cpu()
        if bool(periodic.any()) and abs(float(torch.linalg.det(box))) < 1e-6:
            raise ValueError(
                f"system {g} has a cell of zero volume ({box.tolist()}); periodic graphs need "
                "three independent lattice vectors. Set the cell, or pbc=(False, False, False)."
            )
        points = pos[start:stop].detach().to(torch.float64).cpu()
        i, j, shifts, dist = neighbor_list.compute(points, box, periodic, "ijSd")
        edges.append(torch.stack([j, i]) + start)
        offsets.append(shifts)
        lengths.append(dist)
    edge_index, cell_offsets, dist = (
        torch.cat(edges, 1),
        torch.cat(offsets).long(),
        torch.cat(lengths),
    )
    keep = dist > 1e-4  # coincident atoms (or an atom and its own image) are not neighbours
    edge_index, cell_offsets, dist = edge_index[:, keep], cell_offsets[keep], dist[keep]
    # one sort by (centre, distance); ties keep vesin's (deterministic) order
    order = torch.sort(edge_index[1].double() * (cutoff + 1.0) + dist, stable=True).indices
    if max_neighbors is not None:
        centre = edge_index[1, order]
        counts = torch.bincount(centre, minlength=int(ptr[-1]))
        rank = torch.arange(order.numel()) - (torch.cumsum(counts, 0) - counts)[centre]
        order = order[rank < max_neighbors]
    edge_index = edge_index[:, order].to(pos.device)
    cell_offsets = cell_offsets[order].to(pos.device)
    batch = torch.repeat_interleave(
        torch.arange(cell.shape[0], device=pos.device), ptr.diff().to(pos.device)
    )
    _, dist = edge_vectors(pos, cell.to(pos.device), edge_index, cell_offsets, batch)
    return edge_index, cell_offsets, dist


class RadiusGraphPBC(BaseTransform):
    """Build OC20-style periodic edges for a ``Data`` or a ``Batch`` (see :func:`radius_graph_pbc`).

    Sets ``edge_index``, ``cell_offsets``, ``distances`` and ``neighbors`` (edges per graph, counted
    with ``bincount`` so graphs without edges are kept).

    Args:
        cutoff: radius in Å (OC20: 6).
        max_neighbors: nearest neighbours kept per centre (OC20: 50), ``None`` for all.
        pbc: periodicity along each lattice vector.
        overwrite: recompute even if the sample already has edges (OC20 files ship precomputed
            edges, which are preferred by default).
    """

    def __init__(
        self,
        cutoff: float = 6.0,
        max_neighbors: int | None = 50,
        pbc: Sequence[bool] = (True, True, True),
        overwrite: bool = True,
    ) -> None:
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Å), got {cutoff}.")
        if max_neighbors is not None and max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {max_neighbors}.")
        if len(pbc) != 3:
            raise ValueError(f"pbc needs one flag per lattice vector, got {pbc}.")
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.pbc = tuple(bool(p) for p in pbc)
        self.overwrite = overwrite

    def forward(self, data: Data) -> Data:
        """Add the periodic edges to ``data``."""
        if not self.overwrite and getattr(data, "edge_index", None) is not None:
            return data
        if getattr(data, "cell", None) is None:
            raise KeyError("RadiusGraphPBC needs `cell` (B, 3, 3) on the sample; add the cell.")
        ptr = graph_ptr(data)
        edge_index, offsets, dist = radius_graph_pbc(
            data.pos, data.cell, ptr, self.cutoff, self.max_neighbors, self.pbc
        )
        data.edge_index, data.cell_offsets, data.distances = edge_index, offsets, dist
        batch = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff().cpu())
        data.neighbors = torch.bincount(batch[edge_index[1].cpu()], minlength=ptr.numel() - 1)
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cutoff={self.cutoff}, max_neighbors={self.max_neighbors}, "
            f"pbc={self.pbc})"
        )
