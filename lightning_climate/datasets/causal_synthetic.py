"""Synthetic gridded time series with a known latent causal graph and known mixing.

The generator follows the recipe of SAVAR-style benchmarks used for CDSD: ``num_latents`` latent
modes follow a stable linear vector autoregression of order ``num_lags`` whose lagged graph is
random with a given edge density; each mode lives on its own region of a ``height x width`` grid
(a Voronoi partition of random seed cells, with positive weights normalised to unit norm), and each
grid cell observes its mode plus Gaussian noise. So the true mixing is non-negative with
orthogonal columns, exactly the structure CDSD assumes, and the graph can be scored against truth.

On disk it is one ``.npz`` file (read with ``allow_pickle=False``) holding:

* ``x``: ``(time, 1, height, width)`` float32 observations;
* ``mixing``: ``(1, height * width, num_latents)`` true non-negative mixing;
* ``graph``: ``(num_lags, num_latents, num_latents)`` uint8, ``graph[k, i, j] = 1`` when latent
  ``i`` at ``t - k - 1`` causes latent ``j`` at ``t``;
* ``coefficients``: same shape, the autoregression coefficients (zero off the graph);
* ``latents``: ``(time, num_latents)`` the true latent series;
* ``params``: the generator arguments as a JSON string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_climate.utils import atomic_path

__all__ = ["CausalSyntheticDataset", "generate_causal_synthetic", "read_causal_synthetic"]

_KEYS = ("x", "mixing", "graph", "coefficients", "latents", "params")


def _partition_mixing(height: int, width: int, num_latents: int, rng: np.random.Generator) -> Any:
    """Non-negative ``(height * width, num_latents)`` mixing with disjoint unit-norm columns."""
    cells = height * width
    rows, cols = np.divmod(np.arange(cells), width)
    seeds = rng.choice(cells, size=num_latents, replace=False)
    dist = (rows[:, None] - rows[seeds]) ** 2 + (cols[:, None] - cols[seeds]) ** 2
    owner = dist.argmin(1)  # each seed owns itself, so no region is empty
    mixing = np.zeros((cells, num_latents))
    mixing[np.arange(cells), owner] = rng.uniform(0.5, 1.5, size=cells)
    return mixing / np.linalg.norm(mixing, axis=0, keepdims=True)


def _stable_coefficients(graph: Any, rng: np.random.Generator, max_radius: float = 0.9) -> Any:
    """Random-sign coefficients on ``graph``, shrunk until the autoregression is stable."""
    lags, nodes, _ = graph.shape
    coef = graph * rng.uniform(0.4, 0.8, size=graph.shape) * rng.choice([-1.0, 1.0], graph.shape)
    companion = np.zeros((lags * nodes, lags * nodes))
    companion[nodes:, :-nodes] = np.eye((lags - 1) * nodes)
    for k in range(lags):
        companion[:nodes, k * nodes : (k + 1) * nodes] = coef[k].T
    radius = np.abs(np.linalg.eigvals(companion)).max()
    if radius > max_radius:
        # Scaling lag k by s^(k+1) scales every eigenvalue of the companion matrix by s.
        scale = max_radius / radius
        coef = coef * scale ** np.arange(1, lags + 1)[:, None, None]
    return coef


def generate_causal_synthetic(
    path: str | os.PathLike[str],
    num_latents: int = 6,
    num_lags: int = 1,
    height: int = 8,
    width: int = 8,
    num_timesteps: int = 1000,
    edge_density: float = 0.3,
    noise_std: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set with known graph and mixing to ``path`` (atomically).

    Args:
        path: ``.npz`` file to write.
        num_latents: latent modes, each owning one region of the grid.
        num_lags: order of the latent autoregression.
        height: grid rows.
        width: grid columns.
        num_timesteps: length of the series written (after a discarded burn-in).
        edge_density: probability of each lagged edge, self-edges included.
        noise_std: standard deviation of the observation noise per grid cell.
        seed: seed of every random draw, so the same arguments give the same file.

    Returns:
        The path written.
    """
    if not 0 < edge_density <= 1:
        raise ValueError(f"edge_density must be in (0, 1], got {edge_density}.")
    if num_latents > height * width:
        raise ValueError(
            f"num_latents ({num_latents}) exceeds the {height}x{width} grid cells; use a larger grid."
        )
    if min(num_latents, num_lags, height, width, num_timesteps) < 1 or noise_std < 0:
        raise ValueError("sizes must be positive integers and noise_std non-negative.")
    params = {
        "num_latents": num_latents,
        "num_lags": num_lags,
        "height": height,
        "width": width,
        "num_timesteps": num_timesteps,
        "edge_density": edge_density,
        "noise_std": noise_std,
        "seed": seed,
    }
    rng = np.random.default_rng(seed)
    mixing = _partition_mixing(height, width, num_latents, rng)
    graph = (rng.random((num_lags, num_latents, num_latents)) < edge_density).astype(np.uint8)
    coef = _stable_coefficients(graph, rng)

    burn_in = 100
    total = num_timesteps + burn_in
    latents = np.zeros((total + num_lags, num_latents))
    shocks = rng.standard_normal((total, num_latents))
    for t in range(num_lags, total + num_lags):
        drift = sum(latents[t - k - 1] @ coef[k] for k in range(num_lags))
        latents[t] = drift + shocks[t - num_lags]
    latents = latents[num_lags + burn_in :]
    x = latents @ mixing.T + noise_std * rng.standard_normal((num_timesteps, height * width))

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            x=x.reshape(num_timesteps, 1, height, width).astype(np.float32),
            mixing=mixing[None].astype(np.float32),
            graph=graph,
            coefficients=coef.astype(np.float32),
            latents=latents.astype(np.float32),
            params=np.array(json.dumps(params, sort_keys=True)),
        )
    return path


def read_causal_synthetic(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a file written by :func:`generate_causal_synthetic`.

    Returns:
        The arrays under the names of the module docstring, with ``params`` decoded to a dict.

    Raises:
        FileNotFoundError: the file is missing (with the command that writes it).
        ValueError: the file lacks a key or its shapes disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Write it with CausalSyntheticDataModule(root=...)"
            f".prepare_data() or lightning_climate.datasets.generate_causal_synthetic('{path}')."
        )
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in _KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; it was not written by generate_causal_synthetic. "
                "Delete it and run prepare_data() again."
            )
        data = {key: archive[key] for key in _KEYS}
    data["params"] = json.loads(str(data["params"]))
    steps, _, height, width = data["x"].shape
    _lags, nodes, _ = data["graph"].shape
    if data["mixing"].shape != (1, height * width, nodes) or data["latents"].shape != (
        steps,
        nodes,
    ):
        raise ValueError(
            f"{path}: shapes of x {data['x'].shape}, mixing {data['mixing'].shape}, graph "
            f"{data['graph'].shape} and latents {data['latents'].shape} disagree; regenerate it."
        )
    return data


class CausalSyntheticDataset(Dataset[dict[str, Tensor]]):
    """Windows of a gridded series: sample ``i`` starts at time ``starts[i]``.

    Samples are ``{"x": (window_length, V, height, width) float32, "index": int64 scalar}`` in the
    units of the series (tasks standardise); ``index`` is the window's first time step in the
    series, so it names the same window in every split, seed and process.

    Args:
        series: ``(time, V, height, width)`` array.
        starts: first time step of each window.
        window_length: time steps per window.
    """

    def __init__(self, series: Any, starts: Any, window_length: int) -> None:
        self.series = torch.as_tensor(series, dtype=torch.float32)
        self.starts = torch.as_tensor(starts, dtype=torch.long)
        self.window_length = window_length
        if len(self.starts) and int(self.starts.max()) + window_length > len(self.series):
            raise ValueError("a window runs past the end of the series.")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        start = int(self.starts[index])
        window = self.series[start : start + self.window_length]
        return {"x": window, "index": self.starts[index].clone()}
