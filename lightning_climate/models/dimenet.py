"""DimeNet++ on periodic OC20 graphs, built from PyG's DimeNet++ blocks with our own triplets.

PyG's ``DimeNetPlusPlus.forward`` needs ``pyg-lib`` (radius graph) and ``torch-sparse`` (its
``triplets``), neither installable from PyPI, and computes angles from raw position differences,
which is wrong across periodic boundaries. Here triplets are enumerated in plain torch (a CSR
gather over the edges entering each atom) and angles come from the offset-corrected edge vectors.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch_geometric.nn.models import DimeNetPlusPlus, dimenet_utils

from lightning_climate.models.schnet import Graph
from lightning_climate.transforms.pbc import edge_vectors

__all__ = ["DimeNetPPBackbone", "triplets"]


def triplets(edge_index: Tensor, cell_offsets: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Pairs of edges ``k -> j`` and ``j -> i`` (edge indices ``idx_kj``, ``idx_ji``).

    ``edge_index`` row 0 is the source, row 1 the target. A pair is dropped when ``k`` is the same
    periodic image as ``i`` (same atom and offsets summing to zero); the same atom through another
    image is a genuine third atom under periodic boundaries.
    """
    source, target = edge_index
    order = torch.argsort(target, stable=True)  # edges grouped by the atom they enter
    indegree = torch.bincount(target, minlength=num_nodes)
    start = torch.cumsum(indegree, 0) - indegree
    counts = indegree[source]  # for edge j -> i: the edges entering j
    idx_ji = torch.repeat_interleave(torch.arange(source.numel(), device=source.device), counts)
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=source.device) - first[idx_ji]
    idx_kj = order[start[source[idx_ji]] + within]
    same_image = (source[idx_kj] == target[idx_ji]) & (
        (cell_offsets[idx_kj] + cell_offsets[idx_ji]) == 0
    ).all(-1)
    keep = ~same_image
    return idx_kj[keep], idx_ji[keep]


_pyg_bessel_basis = dimenet_utils.bessel_basis
_SWAP_LOCK = threading.Lock()


@functools.cache
def _bessel_basis(num_spherical: int, num_radial: int) -> list[list[object]]:
    """PyG's symbolic spherical Bessel basis (immutable sympy expressions), once per process."""
    return _pyg_bessel_basis(num_spherical, num_radial)


@contextlib.contextmanager
def _cached_bessel_basis() -> Iterator[None]:
    """Let PyG's ``SphericalBasisLayer`` reuse the basis while a DimeNet++ is built.

    Its sympy simplification takes ~10 s for 7 x 6 functions, paid again by every construction
    (each model of an evidence run, each checkpoint load); the lambdified functions built from it
    are still PyG's own.
    """
    with _SWAP_LOCK:  # two threads building models must not restore each other's swap
        dimenet_utils.bessel_basis = _bessel_basis
        try:
            yield
        finally:
            dimenet_utils.bessel_basis = _pyg_bessel_basis


class DimeNetPPBackbone(nn.Module):
    """DimeNet++ (PyG blocks) on periodic edges; returns per-atom features.

    Args:
        hidden_channels: width of the edge messages and of the returned atom features.
        num_blocks: interaction blocks.
        int_emb_size: interaction embedding width.
        basis_emb_size: basis embedding width.
        out_emb_channels: output block width.
        num_spherical: spherical harmonics.
        num_radial: radial basis functions.
        cutoff: envelope radius (Å).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_blocks: int = 3,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 128,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 6.0,
    ) -> None:
        super().__init__()
        with _cached_bessel_basis():
            self.dimenet = DimeNetPlusPlus(
                hidden_channels,
                hidden_channels,
                num_blocks,
                int_emb_size,
                basis_emb_size,
                out_emb_channels,
                num_spherical,
                num_radial,
                cutoff=cutoff,
                output_initializer="glorot_orthogonal",
            )
        self.hidden_channels = hidden_channels

    def forward(self, graph: Graph) -> tuple[Tensor, Tensor]:
        """Initial (Z embedding) and final (sum of output blocks) atom features."""
        net = self.dimenet
        if bool((graph.z >= net.emb.emb.num_embeddings).any()):
            raise ValueError(
                f"atomic numbers above {net.emb.emb.num_embeddings - 1} cannot be embedded."
            )
        num_nodes = graph.z.numel()
        vec, dist = edge_vectors(
            graph.pos, graph.cell, graph.edge_index, graph.cell_offsets, graph.batch
        )
        idx_kj, idx_ji = triplets(graph.edge_index, graph.cell_offsets, num_nodes)
        # as PyG: the angle between pos_i - pos_j and pos_j - pos_k, here with periodic vectors
        # (vec_e = source image - target, so both differences are negated and the signs cancel)
        a = (vec[idx_ji] * vec[idx_kj]).sum(-1)
        b = torch.cross(vec[idx_ji], vec[idx_kj], dim=-1).norm(dim=-1)
        angle = torch.atan2(b, a)
        j, i = graph.edge_index
        rbf = net.rbf(dist)
        sbf = net.sbf(dist, angle, idx_kj)
        x = net.emb(graph.z, rbf, i, j)
        h = net.output_blocks[0](x, rbf, i, num_nodes=num_nodes)
        for interaction, output in zip(net.interaction_blocks, net.output_blocks[1:], strict=True):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            h = h + output(x, rbf, i, num_nodes=num_nodes)
        return net.emb.emb(graph.z), h
