"""Catalyst-adsorbate energy (and force) models: a backbone plus PhAST heads.

The backbone is SchNet or DimeNet++ (PyG blocks on periodic edges), optionally frame-averaged
(FAENet-style, ``frame_averaging``).

``ads_cat`` selects the catalyst-adsorbate variants of Carbonero et al. (2023); the disconnected
graph itself is a data transform (``RemoveAdsorbateCatalystEdges``), these are the model sides:

- ``none``: one backbone, one energy head;
- ``separate_pooling``: one shared backbone; per-atom vectors are summed separately over the
  adsorbate and the catalyst atoms **of each graph** (each part scattered by its graph index,
  not the reference code's ``batch * mask``, which pools every masked-out atom of the batch into
  graph 0), concatenated and mapped to the energy by an MLP;
- ``independent``: two backbones that share no weights, one on the adsorbate sub-graph (half
  width) and one on the catalyst sub-graph, pooled and combined as above;
- ``attention``: as ``independent``, plus after every interaction a bipartite GATv2 exchange
  between the parts over all (catalyst, adsorbate) pairs of a graph, whose only edge feature is
  the catalyst atom's height (z) on Gaussians, i.e. no relative x-y geometry. The two node sets
  are kept separate (bipartite ``(x_src, x_dst)``), so there are no index offsets to get wrong.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv
from torch_geometric.nn.models.schnet import GaussianSmearing
from torch_geometric.utils import scatter

from lightning_climate.models.dimenet import DimeNetPPBackbone
from lightning_climate.models.frame_averaging import frame_rotations
from lightning_climate.models.heads import (
    EnergyHead,
    EnergyKind,
    ForceHead,
    ForceKind,
    gradient_forces,
)
from lightning_climate.models.pooling import PoolingEnergyHead, check_pooling_arguments
from lightning_climate.models.schnet import Graph, SchNetBackbone

__all__ = ["CatalystModel", "bipartite_edges"]

AdsCat = Literal["none", "separate_pooling", "independent", "attention"]
_ADSORBATE_TAG = 2


def bipartite_edges(src_batch: Tensor, dst_batch: Tensor, num_graphs: int) -> Tensor:
    """All (source, destination) pairs within each graph; both batches must be sorted.

    Returns:
        (2, E) indices into the source and the destination node sets.
    """
    n_src = torch.bincount(src_batch, minlength=num_graphs)
    src_ptr = torch.cumsum(n_src, 0) - n_src
    counts = n_src[dst_batch]
    dst = torch.repeat_interleave(torch.arange(dst_batch.numel(), device=dst_batch.device), counts)
    start = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=dst_batch.device) - start[dst]
    return torch.stack([src_ptr[dst_batch][dst] + within, dst])


class _PartEnergy(nn.Module):
    """Pool adsorbate and catalyst atoms per graph separately, then an MLP to the energy."""

    def __init__(self, ads_channels: int, cat_channels: int, hidden: int) -> None:
        super().__init__()
        half = max(hidden // 2, 1)
        self.ads = nn.Linear(ads_channels, half)
        self.cat = nn.Linear(cat_channels, half)
        self.mlp = nn.Sequential(nn.Linear(2 * half, half), nn.SiLU(), nn.Linear(half, 1))

    def forward(
        self, h_ads: Tensor, ads_batch: Tensor, h_cat: Tensor, cat_batch: Tensor, num_graphs: int
    ) -> Tensor:
        ads = scatter(self.ads(h_ads), ads_batch, dim=0, dim_size=num_graphs, reduce="sum")
        cat = scatter(self.cat(h_cat), cat_batch, dim=0, dim_size=num_graphs, reduce="sum")
        return self.mlp(torch.cat([ads, cat], dim=-1)).squeeze(-1)


class CatalystModel(nn.Module):
    """Energy (and forces) of OC20 systems; see the module docstring for ``ads_cat``.

    Args:
        hidden_channels: atom feature width (the adsorbate backbone of ``independent`` and
            ``attention`` uses half of it, as in the paper).
        num_filters: SchNet filter width.
        num_interactions: interaction blocks.
        num_gaussians: radial basis size.
        cutoff: radius (Å) of the filters.
        phast_embedding: PhAST atom embeddings instead of Z only.
        energy_head: ``sum``, ``mean``, ``weighted_initial``, ``weighted_final`` or ``pooling``
            (:class:`~lightning_climate.models.pooling.PoolingEnergyHead`, with
            ``ads_cat='none'`` and no frame averaging; the output then also holds ``aux_loss``
            and its terms ``pool_mincut``, ``pool_mincut_ho``, ``pool_ortho``).
        force_head: ``none``, ``gradient``, ``direct`` or ``mixed``.
        ads_cat: ``none``, ``separate_pooling``, ``independent`` or ``attention``.
        frame_averaging: ``none``, ``2D`` or ``3D``: a FAENet-style model whose filters also
            see the raw edge vectors, made invariant by averaging over PCA frames (all frames in
            evaluation, one random frame per graph in training).
        fa_se3: use only the proper rotations among the frames.
        backbone: ``schnet`` or ``dimenet++`` (the latter with ``ads_cat='none'``, no frame
            averaging; ``num_interactions`` is its number of blocks).
        pool_clusters: clusters per graph of the ``pooling`` head (>= 1).
        pool_mixing: weight in [0, 1] of the pooling head's first-order min-cut term against its
            triangle-motif term.
        num_spherical: spherical harmonics of DimeNet++'s angular basis.
        num_radial: radial basis functions of DimeNet++. PyG builds the basis symbolically (sympy):
            the default 7 x 6 takes ~10 s to construct on one core, 3 x 3 about 1 s.
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        cutoff: float = 6.0,
        phast_embedding: bool = False,
        energy_head: EnergyKind = "sum",
        force_head: ForceKind = "none",
        ads_cat: AdsCat = "none",
        frame_averaging: Literal["none", "2D", "3D"] = "none",
        fa_se3: bool = False,
        backbone: Literal["schnet", "dimenet++"] = "schnet",
        pool_clusters: int = 4,
        pool_mixing: float = 0.5,
        num_spherical: int = 7,
        num_radial: int = 6,
    ) -> None:
        super().__init__()
        check_pooling_arguments(pool_clusters, pool_mixing)
        if energy_head == "pooling" and (ads_cat != "none" or frame_averaging != "none"):
            raise ValueError(
                "energy_head='pooling' is implemented for ads_cat='none' and "
                "frame_averaging='none'; use another energy head with those variants."
            )
        if force_head not in ("none", "gradient", "direct", "mixed"):
            raise ValueError(
                f"force_head must be none, gradient, direct or mixed, got {force_head!r}."
            )
        if ads_cat not in ("none", "separate_pooling", "independent", "attention"):
            raise ValueError(
                f"ads_cat must be none, separate_pooling, independent or attention, got {ads_cat!r}."
            )
        if ads_cat != "none" and force_head != "none":
            raise ValueError(
                "the catalyst-adsorbate variants predict relaxed energies (IS2RE) only; use "
                "force_head='none' with them, or ads_cat='none' for S2EF."
            )
        if frame_averaging not in ("none", "2D", "3D"):
            raise ValueError(f"frame_averaging must be none, 2D or 3D, got {frame_averaging!r}.")
        if frame_averaging != "none" and ads_cat != "none":
            raise ValueError("frame averaging is implemented for ads_cat='none' only.")
        self.force_head = force_head
        self.ads_cat = ads_cat
        self.frame_averaging = frame_averaging
        self.fa_se3 = fa_se3
        vector = frame_averaging != "none"
        if backbone not in ("schnet", "dimenet++"):
            raise ValueError(f"backbone must be schnet or dimenet++, got {backbone!r}.")
        if backbone == "dimenet++" and (ads_cat != "none" or vector or phast_embedding):
            raise ValueError(
                "dimenet++ is available with ads_cat='none', frame_averaging='none' and "
                "phast_embedding=False; use backbone='schnet' for those variants."
            )

        def make_schnet(width: int, gaussians: int, filters: int) -> SchNetBackbone:
            return SchNetBackbone(
                width, filters, num_interactions, gaussians, cutoff, phast_embedding, vector
            )

        self.backbone: nn.Module
        if backbone == "dimenet++":
            self.backbone = DimeNetPPBackbone(
                hidden_channels,
                num_interactions,
                num_spherical=num_spherical,
                num_radial=num_radial,
                cutoff=cutoff,
            )
        else:
            self.backbone = make_schnet(hidden_channels, num_gaussians, num_filters)
        self.energy: nn.Module
        if energy_head == "pooling":
            self.energy = PoolingEnergyHead(hidden_channels, pool_clusters, pool_mixing)
        elif ads_cat == "none":
            self.energy = EnergyHead(hidden_channels, energy_head, hidden_channels)
        else:
            ads_width = hidden_channels
            if ads_cat in ("independent", "attention"):
                ads_width = max(hidden_channels // 2, 2)
                self.ads_backbone = make_schnet(
                    ads_width, max(num_gaussians // 2, 2), max(num_filters // 2, 2)
                )
            self.energy = _PartEnergy(ads_width, hidden_channels, hidden_channels)
        if ads_cat == "attention":
            self.height_rbf = GaussianSmearing(0.0, 20.0, num_gaussians)
            self.to_ads = nn.ModuleList(
                GATv2Conv(
                    (hidden_channels, ads_width),
                    ads_width,
                    heads=3,
                    concat=False,
                    edge_dim=num_gaussians,
                    add_self_loops=False,
                )
                for _ in range(num_interactions)
            )
            self.to_cat = nn.ModuleList(
                GATv2Conv(
                    (ads_width, hidden_channels),
                    hidden_channels,
                    heads=3,
                    concat=False,
                    edge_dim=num_gaussians,
                    add_self_loops=False,
                )
                for _ in range(num_interactions)
            )
        self.forces = ForceHead(hidden_channels) if force_head in ("direct", "mixed") else None

    def forward(self, data: Data) -> dict[str, Tensor]:
        """Predict ``energy`` (B,) and, with a force head, ``forces`` (N, 3).

        The ``mixed`` head also returns ``forces_gradient`` (the energy gradient) for the
        consistency loss; the ``pooling`` energy head returns the scalar ``aux_loss`` and its
        batch-mean terms ``pool_mincut``, ``pool_mincut_ho`` and ``pool_ortho``.
        """
        needs_grad = self.force_head in ("gradient", "mixed")
        pos = data.pos
        if needs_grad:
            pos = pos.detach().requires_grad_(True)
        with torch.set_grad_enabled(needs_grad or torch.is_grad_enabled()):
            graph = Graph.from_data(data, pos)
            out: dict[str, Tensor] = {}
            if self.frame_averaging != "none":
                out |= self._frame_averaged(graph)
            elif self.ads_cat == "none":
                h0, h = self.backbone(graph)
                if isinstance(self.energy, PoolingEnergyHead):
                    pooled = self.energy(h, graph.batch, graph.num_graphs, graph.edge_index)
                    out["energy"] = pooled.energy
                    out |= pooled.losses()
                else:
                    out["energy"] = self.energy(h, h0, graph.batch, graph.num_graphs)
                if self.forces is not None:
                    out["forces"] = self.forces(h)
            else:
                out["energy"] = self._two_part_energy(graph)
            if needs_grad:
                grad = gradient_forces(out["energy"], pos, create_graph=self.training)
                out["forces" if self.force_head == "gradient" else "forces_gradient"] = grad
        return out

    def _frame_averaged(self, graph: Graph) -> dict[str, Tensor]:
        frames, centroid = frame_rotations(
            graph.pos.detach(), graph.batch, graph.num_graphs, self.frame_averaging, self.fa_se3
        )
        if self.training:  # stochastic frame averaging: one random frame per graph
            pick = torch.randint(frames.shape[0], (graph.num_graphs,), device=frames.device)
            frames = frames[pick, torch.arange(graph.num_graphs, device=frames.device)][None]
        energies, forces = [], []
        for axes in frames:
            per_atom = axes[graph.batch]
            pos = ((graph.pos - centroid[graph.batch]).unsqueeze(1) @ per_atom).squeeze(1)
            framed = replace(graph, pos=pos, cell=graph.cell @ axes)
            h0, h = self.backbone(framed)
            energies.append(self.energy(h, h0, graph.batch, graph.num_graphs))
            if self.forces is not None:  # predicted in the frame: rotate back with U^T
                forces.append((self.forces(h).unsqueeze(1) @ per_atom.transpose(1, 2)).squeeze(1))
        out = {"energy": torch.stack(energies).mean(0)}
        if forces:
            out["forces"] = torch.stack(forces).mean(0)
        return out

    def _two_part_energy(self, graph: Graph) -> Tensor:
        is_ads = graph.tags == _ADSORBATE_TAG
        if self.ads_cat == "separate_pooling":
            _, h = self.backbone(graph)
            return self.energy(
                h[is_ads], graph.batch[is_ads], h[~is_ads], graph.batch[~is_ads], graph.num_graphs
            )
        ads, cat = graph.subgraph(is_ads), graph.subgraph(~is_ads)
        if self.ads_cat == "independent":
            _, h_ads = self.ads_backbone(ads)
            _, h_cat = self.backbone(cat)
        else:
            h_ads, h_cat = self._attend(ads, cat, graph.num_graphs)
        return self.energy(h_ads, ads.batch, h_cat, cat.batch, graph.num_graphs)

    def _attend(self, ads: Graph, cat: Graph, num_graphs: int) -> tuple[Tensor, Tensor]:
        cat_to_ads = bipartite_edges(cat.batch, ads.batch, num_graphs)
        ads_to_cat = cat_to_ads.flip(0)
        height = self.height_rbf(cat.pos[:, 2])[cat_to_ads[0]]
        h_ads, h_cat = self.ads_backbone.embed(ads), self.backbone.embed(cat)
        ads_dist, ads_rbf = self.ads_backbone.edge_features(ads)
        cat_dist, cat_rbf = self.backbone.edge_features(cat)
        for k in range(self.backbone.num_layers):
            h_ads = self.ads_backbone.interact(k, h_ads, ads, ads_dist, ads_rbf)
            h_cat = self.backbone.interact(k, h_cat, cat, cat_dist, cat_rbf)
            new_ads = self.to_ads[k]((h_cat, h_ads), cat_to_ads, height)
            new_cat = self.to_cat[k]((h_ads, h_cat), ads_to_cat, height)
            h_ads = F.normalize(h_ads + new_ads, dim=-1)
            h_cat = F.normalize(h_cat + new_cat, dim=-1)
        return h_ads, h_cat
