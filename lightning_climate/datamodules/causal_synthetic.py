"""Datamodule of synthetic gridded series with a known latent graph.

The data format and generator are in :mod:`lightning_climate.datasets.causal_synthetic`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.causal_synthetic import (
    CausalSyntheticDataset,
    generate_causal_synthetic,
    read_causal_synthetic,
)

__all__ = ["CausalSyntheticDataModule", "blocked_window_starts"]


def blocked_window_starts(
    length: int, block_length: int, window_length: int, fractions: tuple[float, float, float]
) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """Start indices of train/val/test windows of a temporally blocked split.

    The series is cut into blocks of ``block_length`` steps; each block is cut into consecutive
    train, val and test parts by ``fractions``, and a window never crosses a part boundary, so no
    time step is seen by two splits.

    Returns:
        Train, val and test window starts, and the ``(start, stop)`` time ranges of train parts.
    """
    starts: tuple[list[int], list[int], list[int]] = ([], [], [])
    train_ranges = []
    for block_start in range(0, length, block_length):
        block_stop = min(block_start + block_length, length)
        size = block_stop - block_start
        edges = np.round(np.cumsum((0.0, *fractions)) * size).astype(int) + block_start
        for split, (lo, hi) in enumerate(itertools.pairwise(edges)):
            starts[split].extend(range(lo, hi - window_length + 1))
            if split == 0 and hi > lo:
                train_ranges.append((int(lo), int(hi)))
    return starts[0], starts[1], starts[2], train_ranges


class CausalSyntheticDataModule(BaseDataModule):
    """Windows of a synthetic SAVAR-style series whose latent graph and mixing are known.

    With ``generate=True``, ``prepare_data`` writes ``<root>/causal_synthetic.npz`` with
    :func:`~lightning_climate.datasets.generate_causal_synthetic` unless it exists; ``setup``
    reads it, checks it was made with the same generator arguments, and splits it in time blocks
    (train, val, test parts in every block; windows never cross a part).
    :meth:`train_statistics` gives one ``x_mean`` and ``x_std`` over the training parts only,
    which the task standardises with (and checkpoints carry).

    Samples: ``{"x": (window_length, 1, height, width), "index": ()}``. The ground truth is
    available after ``setup`` from :meth:`ground_truth`, which
    :class:`~lightning_climate.tasks.CausalDiscoveryTask` uses to log graph-recovery metrics.

    Args:
        root: directory of the data file.
        num_latents: latent modes of the generator.
        num_lags: order of the latent autoregression.
        height: grid rows.
        width: grid columns.
        num_timesteps: series length.
        edge_density: probability of each lagged edge.
        noise_std: observation noise per grid cell.
        data_seed: seed of the generator.
        window_length: time steps per sample; default ``num_lags + 1``.
        block_length: time steps per block of the split.
        val_fraction: share of each block used for validation.
        test_fraction: share of each block used for testing.
        batch_size: samples per batch.
        num_workers: loader worker processes.
        seed: seed of the shuffling (the split itself is deterministic).
        generate: let ``prepare_data`` write the data file if it is missing.
    """

    data_name = "causal synthetic data file"

    file_name = "causal_synthetic.npz"

    def __init__(
        self,
        root: str | os.PathLike[str] = "data/causal_synthetic",
        num_latents: int = 6,
        num_lags: int = 1,
        height: int = 8,
        width: int = 8,
        num_timesteps: int = 1000,
        edge_density: float = 0.3,
        noise_std: float = 0.2,
        data_seed: int = 0,
        window_length: int | None = None,
        block_length: int = 200,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        generate: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        self.generate = generate
        self.generator_args = {
            "num_latents": num_latents,
            "num_lags": num_lags,
            "height": height,
            "width": width,
            "num_timesteps": num_timesteps,
            "edge_density": edge_density,
            "noise_std": noise_std,
            "seed": data_seed,
        }
        self.window_length = num_lags + 1 if window_length is None else window_length
        if self.window_length < 2:
            raise ValueError(f"window_length must be >= 2, got {self.window_length}.")
        if not (
            0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in "
                "[0, 1) and leave a training share."
            )
        if block_length < self.window_length:
            raise ValueError(
                f"block_length ({block_length}) must be at least window_length ({self.window_length})."
            )
        self.block_length = block_length
        self.fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
        self._train_ranges: list[tuple[int, int]] = []
        self._series: Any = None
        self.ground_truth_graph: Tensor | None = None
        self.ground_truth_mixing: Tensor | None = None

    @property
    def path(self) -> Path:
        """The data file."""
        return self.root / self.file_name

    def prepare_data(self) -> None:
        """Write the data file if it is missing and ``generate`` is set (rank 0 only)."""
        if self.path.exists():
            return
        if not self.generate:
            raise self.missing_data_error(self.path)
        generate_causal_synthetic(self.path, **self.generator_args)

    def setup(self, stage: str | None = None) -> None:
        """Read the file, check its generator arguments and split it."""
        if not self.path.exists():
            raise self.missing_data_error(self.path)
        data = read_causal_synthetic(self.path)
        if data["params"] != self.generator_args:
            diff = {
                k: (data["params"].get(k), v)
                for k, v in self.generator_args.items()
                if data["params"].get(k) != v
            }
            raise ValueError(
                f"{self.path} was generated with other arguments (file, requested): {diff}. "
                "Delete the file or choose another root, then run prepare_data() again."
            )
        series = data["x"]
        train, val, test, train_ranges = blocked_window_starts(
            len(series), self.block_length, self.window_length, self.fractions
        )
        if not train:
            raise ValueError(
                f"no training window of {self.window_length} steps fits in blocks of "
                f"{self.block_length}; raise block_length or num_timesteps."
            )
        self._series, self._train_ranges = series, train_ranges
        args = (self.window_length,)
        self.train_dataset = CausalSyntheticDataset(series, train, *args)
        self.val_dataset = CausalSyntheticDataset(series, val, *args)
        self.test_dataset = CausalSyntheticDataset(series, test, *args)
        self.predict_dataset = self.test_dataset
        self.ground_truth_graph = torch.as_tensor(data["graph"], dtype=torch.bool)
        self.ground_truth_mixing = torch.as_tensor(data["mixing"])

    def compute_train_statistics(self) -> dict[str, Tensor]:
        """One ``x_mean`` and ``x_std`` over the training parts of the series."""
        values = np.concatenate([self._series[lo:hi].ravel() for lo, hi in self._train_ranges])
        return {
            "x_mean": torch.tensor(float(values.mean())),
            "x_std": torch.tensor(float(values.std())),
        }

    def statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """Two scalars."""
        return {"x_mean": (), "x_std": ()}

    def ground_truth(self) -> tuple[Tensor, Tensor] | None:
        """The true lagged latent graph ``(lags, latents, latents)`` and mixing, after ``setup``."""
        if self.ground_truth_graph is None or self.ground_truth_mixing is None:
            return None
        return self.ground_truth_graph, self.ground_truth_mixing
