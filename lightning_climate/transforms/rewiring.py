"""PhAST graph rewirings and the adsorbate-catalyst edge removal, as PyG transforms.

PhAST (Duval et al., JMLR 2024) shrinks OC20 graphs using the atom tags (0 sub-surface,
1 surface, 2 adsorbate): drop the sub-surface atoms, or replace them by one super-node per graph,
or by one super-node per element. Carbonero et al. (2023) remove the edges between adsorbate and
catalyst. Each transform works on a single ``Data`` (in DataLoader workers, the cheap place) and on
a collated ``Batch``; it never recomputes the neighbour search, it edits the existing edges.

Differences from the ``phast`` package (deliberate):

- edges between two kept atoms keep their stored ``distances`` and ``cell_offsets`` (phast
  overwrites every distance with an offset-free Euclidean one, wrong across the cell boundary);
- a graph without sub-surface atoms keeps its atoms and gets no super-node (phast fails);
- ``neighbors`` is counted with ``bincount`` over all graphs (phast's ``unique`` drops empty graphs).

Super-node edges have zero offsets and a Euclidean distance, and those longer than ``cutoff`` are
dropped, as in phast, so the edge counts on real OC20 data equal the published ones.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import scatter

from lightning_climate.transforms.pbc import graph_ptr

__all__ = [
    "OneSupernodePerAtomType",
    "OneSupernodePerGraph",
    "RemoveAdsorbateCatalystEdges",
    "RemoveTag0",
]

_ATOM_KEYS = ("pos", "pos_relaxed", "atomic_numbers", "tags", "fixed", "force")
_EDGE_KEYS = ("edge_index", "cell_offsets", "distances")
#: atomic number of the PhAST per-graph super-node (``num_elements + 1`` with 83 elements).
SUPERNODE_Z = 84


def _require(data: Data, name: str) -> None:
    missing = [k for k in ("tags", *_EDGE_KEYS) if getattr(data, k, None) is None]
    if missing:
        raise KeyError(
            f"{name} needs {missing} on the sample; OC20 IS2RE files store them, otherwise add "
            "RadiusGraphPBC before this transform (and keep the `tags` field)."
        )


def _batch_vector(ptr: Tensor) -> Tensor:
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


def _finish(data: Data, graph_of_atom: Tensor, num_graphs: int) -> Data:
    """Recompute ``natoms``, ``ptr``, ``batch`` and ``neighbors`` after atoms or edges changed."""
    natoms = torch.bincount(graph_of_atom, minlength=num_graphs)
    data.natoms = natoms
    if isinstance(data, Batch) or getattr(data, "ptr", None) is not None:
        data.ptr = torch.cat([natoms.new_zeros(1), natoms.cumsum(0)])
        data.batch = graph_of_atom
    data.neighbors = torch.bincount(graph_of_atom[data.edge_index[1]], minlength=num_graphs)
    return data


def _keep_edges(data: Data, mask: Tensor) -> None:
    data.edge_index = data.edge_index[:, mask]
    data.cell_offsets = data.cell_offsets[mask]
    data.distances = data.distances[mask]


class RemoveTag0(BaseTransform):
    """Drop the sub-surface (tag 0) atoms and every edge touching them.

    On the real OC20 sample (3 systems) this leaves 64 atoms and 1236 edges.
    """

    def forward(self, data: Data) -> Data:
        """Remove the tag-0 atoms of ``data``."""
        _require(data, type(self).__name__)
        ptr = graph_ptr(data)
        graph = _batch_vector(ptr)
        keep = data.tags != 0
        new_index = torch.full_like(data.tags, -1)
        new_index[keep] = torch.arange(int(keep.sum()), device=keep.device)
        edge_mask = keep[data.edge_index].all(dim=0)
        _keep_edges(data, edge_mask)
        data.edge_index = new_index[data.edge_index]
        for key in _ATOM_KEYS:
            if getattr(data, key, None) is not None:
                data[key] = data[key][keep]
        return _finish(data, graph[keep], ptr.numel() - 1)


class _Supernodes(BaseTransform):
    """Replace groups of tag-0 atoms by super-nodes placed last in their graph."""

    per_element = False

    def __init__(self, cutoff: float = 6.0) -> None:
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Å), got {cutoff}.")
        self.cutoff = cutoff

    def forward(self, data: Data) -> Data:
        """Merge the tag-0 atoms of ``data`` into super-nodes."""
        _require(data, type(self).__name__)
        ptr = graph_ptr(data)
        num_graphs = ptr.numel() - 1
        graph = _batch_vector(ptr)
        n = graph.numel()
        device = graph.device
        sub = data.tags == 0
        z = data.atomic_numbers
        # group key of each sub-surface atom: its graph (and element), sorted graph-major
        key = graph * 1000 + (z if self.per_element else 0)
        groups, member_group = torch.unique(key[sub], return_inverse=True)
        num_groups = groups.numel()
        group_graph = groups // 1000
        # new order: each graph's kept atoms (original order) then its super-nodes
        kept = (~sub).nonzero().flatten()
        node_graph = torch.cat([graph[kept], group_graph])
        kind = torch.cat([torch.zeros_like(kept), torch.ones_like(group_graph)])
        order = torch.arange(node_graph.numel(), device=device)
        for k in (kind, node_graph):  # stable sorts: graph-major, kept atoms before super-nodes
            order = order[torch.sort(k[order], stable=True).indices]
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=device)
        old_to_new = torch.empty(n, dtype=torch.long, device=device)
        old_to_new[kept] = position[: kept.numel()]
        old_to_new[sub] = position[kept.numel() :][member_group]
        sub_index = sub.nonzero().flatten()

        def pooled(values: Tensor, reduce: str) -> Tensor:
            return scatter(
                values[sub_index], member_group, dim=0, dim_size=num_groups, reduce=reduce
            )

        sn_pos = torch.cat([pooled(data.pos[:, :2], "mean"), pooled(data.pos[:, 2:], "max")], 1)
        supernode: dict[str, Tensor] = {
            "pos": sn_pos,
            "atomic_numbers": (
                groups % 1000
                if self.per_element
                else torch.full((num_groups,), SUPERNODE_Z, device=device)
            ).to(z.dtype),
            "tags": torch.zeros(num_groups, dtype=data.tags.dtype, device=device),
        }
        if getattr(data, "fixed", None) is not None:
            supernode["fixed"] = torch.ones(num_groups, dtype=data.fixed.dtype, device=device)
        if getattr(data, "force", None) is not None:
            supernode["force"] = pooled(data.force, "mean")
        if getattr(data, "pos_relaxed", None) is not None:
            supernode["pos_relaxed"] = sn_pos
        for k in _ATOM_KEYS:
            if getattr(data, k, None) is not None:
                data[k] = torch.cat([data[k][kept], supernode[k]])[order]
        data.subnodes = torch.bincount(member_group, minlength=num_groups)

        # edges: re-index, zero the offsets of super-node edges, drop self-loops and duplicates
        touches_sub = sub[data.edge_index].any(dim=0)
        data.edge_index = old_to_new[data.edge_index]
        plain = ~touches_sub
        sn_edges = data.edge_index[:, touches_sub]
        sn_edges = sn_edges[:, sn_edges[0] != sn_edges[1]]
        sn_edges = torch.unique(sn_edges, dim=1)
        sn_dist = (data.pos[sn_edges[0]] - data.pos[sn_edges[1]]).norm(dim=-1)
        close = sn_dist <= self.cutoff
        sn_edges, sn_dist = sn_edges[:, close], sn_dist[close]
        data.edge_index = torch.cat([data.edge_index[:, plain], sn_edges], dim=1)
        data.cell_offsets = torch.cat(
            [data.cell_offsets[plain], data.cell_offsets.new_zeros((sn_edges.shape[1], 3))]
        )
        data.distances = torch.cat([data.distances[plain], sn_dist.to(data.distances.dtype)])
        return _finish(data, node_graph[order], num_graphs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cutoff={self.cutoff})"


class OneSupernodePerGraph(_Supernodes):
    """Replace all tag-0 atoms of each graph by one super-node (``atomic_numbers`` 84).

    The super-node sits at the mean x, y and the maximum z of the atoms it replaces, is fixed,
    carries their mean force, and ``subnodes`` records how many atoms it merged. Edges to merged
    atoms are redirected to it; those longer than ``cutoff`` are dropped. On the real OC20 sample
    this leaves 67 atoms and 1311 edges.

    Args:
        cutoff: maximum length (Å) of a super-node edge.
    """


class OneSupernodePerAtomType(_Supernodes):
    """Replace the tag-0 atoms of each element by one super-node keeping that atomic number.

    Otherwise as :class:`OneSupernodePerGraph`; on the real OC20 sample this leaves 71 atoms and
    1421 edges.

    Args:
        cutoff: maximum length (Å) of a super-node edge.
    """

    per_element = True


class RemoveAdsorbateCatalystEdges(BaseTransform):
    """Remove the edges between adsorbate (tag 2) and catalyst (tags 0, 1) atoms.

    The "disconnected" graph of Carbonero et al. (2023): an edge stays when its two ends have the
    same tag or neither is an adsorbate atom. On the real OC20 sample 11246 of 11596 edges stay.
    """

    def forward(self, data: Data) -> Data:
        """Drop the adsorbate-catalyst edges of ``data``."""
        _require(data, type(self).__name__)
        tj, ti = data.tags[data.edge_index]
        _keep_edges(data, (tj == ti) | ((tj != 2) & (ti != 2)))
        ptr = graph_ptr(data)
        return _finish(data, _batch_vector(ptr), ptr.numel() - 1)
