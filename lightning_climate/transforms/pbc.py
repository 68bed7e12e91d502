"""Radius graphs under periodic boundary conditions, with OC20's conventions.

PyG's ``radius_graph`` needs ``pyg-lib`` (not on PyPI) and knows nothing of periodic cells, so the
neighbour search is delegated to ``vesin-torch`` (exact full neighbour lists, any cell shape, cutoffs
larger than the cell). On top of it we apply what OC20 models expect:

- ``edge_index[0]`` is the neighbour ``j`` (source), ``edge_index[1]`` the centre ``i`` (target);
- ``cell_offsets[e]`` is the integer image of ``j``: ``vec_e = pos[j] + cell_offsets[e] @ cell - pos[i]``;
- each centre keeps its ``max_neighbors`` nearest neighbours (exact ties keep vesin's order, which
  is deterministic); the graph is therefore not symmetric. Edges then come sorted by centre, then
  distance (with ``max_neighbors=None`` they keep vesin's order: no sort is needed);
- ``distances`` are recomputed in torch from ``pos`` and the offsets when ``pos`` requires grad, so
  they carry gradients for forces computed as ``-dE/dpos``; otherwise they are vesin's float64
  lengths cast to ``pos.dtype``. Models that need forces recompute them with :func:`edge_vectors`
  anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
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
        ``distances`` (E,) (differentiable in ``pos`` when it requires grad).

    Raises:
        ValueError: a cell of zero volume along periodic directions, or a bad argument.
    """
    _check_arguments(cutoff, max_neighbors)
    cell = cell.reshape(-1, 3, 3)
    if cell.shape[0] != ptr.numel() - 1:
        raise ValueError(f"got {cell.shape[0]} cells for {ptr.numel() - 1} systems.")
    boxes = cell.detach().to("cpu", torch.float64)
    points = pos.detach().to("cpu", torch.float64)
    if any(pbc):
        flat = np.flatnonzero(np.abs(np.linalg.det(boxes.numpy())) < 1e-6)
        if flat.size:
            g = int(flat[0])
            raise ValueError(
                f"system {g} has a cell of zero volume ({boxes[g].tolist()}); periodic graphs need "
                "three independent lattice vectors. Set the cell, or pbc=(False, False, False)."
            )
    periodic = torch.tensor(list(pbc), dtype=torch.bool)
    neighbor_list = _neighbor_list(float(cutoff))
    bounds = ptr.tolist()
    parts = []
    for g in range(len(bounds) - 1):
        start, stop = bounds[g], bounds[g + 1]
        i, j, shifts, dist = neighbor_list.compute(points[start:stop], boxes[g], periodic, "ijSd")
        parts.append((i.numpy() + start, j.numpy() + start, shifts.numpy(), dist.numpy()))
    # the bookkeeping below is in NumPy: on OC20-sized systems (a few thousand edges) it is about
    # half the time of the same operations in torch, whose per-call overhead dominates
    if len(parts) == 1:
        i, j, shifts, dist = parts[0]
    else:
        i, j, shifts, dist = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    keep = dist > 1e-4  # coincident atoms (or an atom and its own image) are not neighbours
    if not keep.all():
        i, j, shifts, dist = i[keep], j[keep], shifts[keep], dist[keep]
    if max_neighbors is not None:
        # one stable sort by (centre, distance); ties keep vesin's (deterministic) order
        order = np.argsort(i * (cutoff + 1.0) + dist, kind="stable")
        centre = i[order]
        counts = np.bincount(centre, minlength=bounds[-1])
        if (counts > max_neighbors).any():
            rank = np.arange(order.size) - (np.cumsum(counts) - counts)[centre]
            order = order[rank < max_neighbors]
        i, j, shifts, dist = (np.take(a, order, axis=0) for a in (i, j, shifts, dist))
    edge_index = torch.from_numpy(np.stack([j, i])).to(pos.device)
    cell_offsets = torch.from_numpy(shifts.astype(np.int64)).to(pos.device)
    if pos.requires_grad:
        batch = torch.repeat_interleave(
            torch.arange(cell.shape[0], device=pos.device), ptr.diff().to(pos.device)
        )
        _, distances = edge_vectors(pos, cell.to(pos.device), edge_index, cell_offsets, batch)
    else:  # vesin's float64 lengths are the same numbers, more precisely
        distances = torch.from_numpy(dist).to(pos.device, pos.dtype)
    return edge_index, cell_offsets, distances


def _check_arguments(cutoff: float, max_neighbors: int | None) -> None:
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive (Å), got {cutoff}.")
    if max_neighbors is not None and max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1 or None, got {max_neighbors}.")


def _neighbor_list(cutoff: float) -> Any:
    """One vesin ``NeighborList`` per cutoff and thread (it reuses its buffers between calls).

    Single-threaded: OC20 systems are too small for vesin's threads to pay off, and DataLoader
    workers already run in parallel.
    """
    lists = _THREAD_STATE.__dict__.setdefault("neighbor_lists", {})
    if cutoff not in lists:
        vesin = lazy_import("vesin_torch")
        lists[cutoff] = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    return lists[cutoff]


_THREAD_STATE = threading.local()


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
        _check_arguments(cutoff, max_neighbors)
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
