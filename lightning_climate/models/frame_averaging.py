"""Frame averaging (FAENet, Duval et al. 2023): make any model invariant by averaging over frames.

Each graph's frames come from the principal axes of its centred positions: the eigenvectors of the
3x3 covariance (descending eigenvalues), with every combination of signs (8 frames), or only the
proper rotations (``se3``: 4). ``2D`` mode takes the principal axes of x, y only and keeps z (for
slabs whose normal is z): 4 frames, or 2 proper ones. Positions are projected as
``(pos - centroid) @ U`` and the cell as ``cell @ U``, so periodic edge vectors become ``vec @ U``.
A model averaged over all frames is exactly invariant to the corresponding rotations and
reflections; training samples one frame per graph at random instead (stochastic FA).
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import Tensor
from torch_geometric.utils import scatter

__all__ = ["frame_rotations"]


def _sign_patterns(dim: int, se3: bool) -> Tensor:
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=dim)))
    return signs[signs.prod(-1) > 0] if se3 else signs


def frame_rotations(
    pos: Tensor, batch: Tensor, num_graphs: int, mode: Literal["2D", "3D"] = "3D", se3: bool = False
) -> tuple[Tensor, Tensor]:
    """All frames of every graph.

    Args:
        pos: (N, 3) positions.
        batch: (N,) graph of each atom.
        num_graphs: number of graphs.
        mode: ``"3D"`` (PCA of x, y, z) or ``"2D"`` (PCA of x, y; z kept).
        se3: keep only frames with determinant +1.

    Returns:
        Frames ``U`` (F, B, 3, 3) (columns are the frame axes) and centroids (B, 3).
    """
    if mode not in ("2D", "3D"):
        raise ValueError(f"frame averaging mode must be '2D' or '3D', got {mode!r}.")
    centroid = scatter(pos, batch, dim=0, dim_size=num_graphs, reduce="mean")
    centred = pos - centroid[batch]
    dim = 3 if mode == "3D" else 2
    outer = centred[:, :dim, None] * centred[:, None, :dim]
    cov = scatter(outer, batch, dim=0, dim_size=num_graphs, reduce="mean")
    _, vectors = torch.linalg.eigh(cov.double())
    vectors = vectors.flip(-1)  # descending eigenvalues
    # make every eigenbasis proper (det +1), so a sign pattern's determinant is its product
    vectors[..., -1] *= torch.linalg.det(vectors).sign()[:, None]
    vectors = vectors.to(pos.dtype)
    frames = []
    for signs in _sign_patterns(dim, se3).to(pos):
        axes = vectors * signs  # flip the sign of each axis (column)
        if dim == 2:
            full = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device)
            full[:, :2, :2] = axes
            full[:, 2, 2] = 1.0
            axes = full
        frames.append(axes)
    return torch.stack(frames), centroid
