"""ERA5 downscaling datamodule: low/high-resolution pairs by block mean, split by date ranges."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.era5 import ERA5Dataset, FieldNormalizer

__all__ = ["ERA5DataModule"]


class ERA5DataModule(BaseDataModule):
    """Downscaling pairs from ERA5 files, with training-split statistics saved in checkpoints.

    Samples are ``{"lr", "hr", "index", "time"}`` as documented in
    :mod:`lightning_climate.datasets.era5` (the same ``lr``/``hr`` keys as the Navier-Stokes
    datamodule). Splits are disjoint date ranges (no leakage between neighbouring hours). The
    normalisation statistics come from the training split's high-resolution fields only, and one
    affine map is applied to ``hr`` before ``lr`` is pooled from it, so ``lr`` stays the exact
    block mean of ``hr``. They live in :attr:`normalizer` (buffers) and in this datamodule's
    ``state_dict``, which Lightning stores in checkpoints and restores before testing.

    Args:
        paths: ERA5 files, directories or glob patterns (NetCDF in CDS or cfgrib naming, Zarr).
        variables: ERA5 short names, e.g. ``["t2m"]`` or ``["t", "z"]``.
        levels: pressure levels (hPa) for pressure-level variables; default all in the files.
        factor: coarsening factor N (``hr`` is cropped to a multiple of N).
        train_range: inclusive ``[start, end]`` dates of the training split.
        val_range: dates of the validation split, or ``None`` for none.
        test_range: dates of the test split, or ``None`` for none.
        patch_size: high-resolution patch size (multiple of N), or ``None`` for full fields.
        normalization: ``"none"`` (physical units; for tasks that normalise inside, such as
            :class:`~lightning_climate.tasks.DownscalingTask`, which reads
            :meth:`train_statistics`), ``"minmax"`` (training range to [0, 1]), ``"zscore"``, or
            ``"scale"`` (divide by the largest training magnitude: keeps 0 at 0, so the softmax
            constraint stays valid on test values below the training minimum).
        batch_size: samples per batch.
        num_workers: DataLoader workers (each reopens the files lazily).
        seed: unused by the date split; kept for the common datamodule signature.
        storage_options: fsspec options for Zarr URLs; ``None`` reads ``gs://`` and ``s3://``
            anonymously (see :class:`~lightning_climate.datasets.ERA5Dataset`).

    Raises:
        ValueError: if a date range ends before it starts or two ranges overlap.
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        variables: Sequence[str] = ("t2m",),
        levels: Sequence[float] | None = None,
        factor: int = 2,
        train_range: tuple[str, str] | None = None,
        val_range: tuple[str, str] | None = None,
        test_range: tuple[str, str] | None = None,
        patch_size: int | None = None,
        normalization: Literal["none", "minmax", "zscore", "scale"] = "none",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if normalization not in ("none", "minmax", "zscore", "scale"):
            raise ValueError(
                "normalization must be 'none', 'minmax', 'zscore' or 'scale', got "
                f"{normalization!r}."
            )
        self.paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.variables = list(variables)
        self.levels = None if levels is None else list(levels)
        self.factor = factor
        self.ranges = {"train": train_range, "val": val_range, "test": test_range}
        _check_disjoint(self.ranges)
        self.storage_options = storage_options
        self.patch_size = patch_size
        self.normalization = normalization
        self.normalizer: FieldNormalizer | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._raw_stats: dict[str, torch.Tensor] | None = None
        self.channels: list[str] = []

    def _dataset(self, split: str) -> ERA5Dataset | None:
        time_range = self.ranges[split]
        if time_range is None and split != "train":
            return None
        return ERA5Dataset(
            self.paths,
            self.variables,
            self.levels,
            self.factor,
            None if time_range is None else (str(time_range[0]), str(time_range[1])),
            self.patch_size,
            self.normalizer,
            storage_options=self.storage_options,
        )

    def setup(self, stage: str) -> None:
        """Index the files, fit the statistics on the training split, build the split datasets."""
        train = ERA5Dataset(
            self.paths,
            self.variables,
            self.levels,
            self.factor,
            None if self.ranges["train"] is None else tuple(map(str, self.ranges["train"])),
            self.patch_size,
            storage_options=self.storage_options,
        )
        self.channels = train.channels
        if self.normalizer is None:
            self.normalizer = FieldNormalizer(len(self.channels))
            if self._loaded_state is not None:
                self._apply_state(self._loaded_state)
            else:
                self._raw_stats = FieldNormalizer.statistics(train)
                self.normalizer.set_from(self._raw_stats, self.normalization)
        train.normalizer = self.normalizer
        self.train_dataset = train
        self.val_dataset = self._dataset("val")
        self.test_dataset = self._dataset("test")
        self.predict_dataset = self.test_dataset

    def state_dict(self) -> dict[str, Any]:
        """Normalisation statistics of the training split (empty before ``setup``)."""
        if self.normalizer is None:
            return {}
        assert self._raw_stats is not None
        return {
            "channels": list(self.channels),
            "offset": self.normalizer.offset.clone(),
            "scale": self.normalizer.scale.clone(),
            **{f"raw_{k}": v.clone() for k, v in self._raw_stats.items()},
        }

    def train_statistics(self) -> dict[str, torch.Tensor]:
        """Per-channel ``min``/``max`` (and ``mean``/``std``) of the training ``hr`` as delivered.

        In the units of the samples (after this datamodule's normalisation), for tasks that
        normalise inside (:class:`~lightning_climate.tasks.DownscalingTask`). Call after ``setup``.
        """
        if self.normalizer is None or self._raw_stats is None:
            raise RuntimeError("call setup('fit') before train_statistics().")
        scale, offset = self.normalizer.scale, self.normalizer.offset
        return {
            "min": (self._raw_stats["min"] - offset) / scale,
            "max": (self._raw_stats["max"] - offset) / scale,
            "mean": (self._raw_stats["mean"] - offset) / scale,
            "std": self._raw_stats["std"] / scale,
        }

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.normalizer is not None
        if state["channels"] != self.channels:
            raise ValueError(
                f"the checkpoint's statistics are for channels {state['channels']} but this "
                f"datamodule reads {self.channels}; use the same variables and levels as in training."
            )
        self.normalizer.offset.copy_(torch.as_tensor(state["offset"]))
        self.normalizer.scale.copy_(torch.as_tensor(state["scale"]))
        self._raw_stats = {
            k: torch.as_tensor(state[f"raw_{k}"]) for k in ("min", "max", "mean", "std")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict` (before or after ``setup``)."""
        if not state_dict:
            return
        self._loaded_state = dict(state_dict)
        if self.normalizer is not None:
            self._apply_state(self._loaded_state)


def _check_disjoint(ranges: dict[str, tuple[str, str] | None]) -> None:
    """Inclusive date ranges must be ordered and must not share a time (no leakage)."""
    bounds = {}
    for split, span in ranges.items():
        if span is None:
            continue
        start, end = (np.datetime64(str(t), "s") for t in span)
        if end < start:
            raise ValueError(f"{split}_range {span} ends before it starts; give [start, end].")
        bounds[split] = (start, end, span)
    names = list(bounds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1, a_span), (b0, b1, b_span) = bounds[a], bounds[b]
            if a0 <= b1 and b0 <= a1:
                raise ValueError(
                    f"{a}_range {a_span} and {b}_range {b_span} overlap (both include "
                    f"{max(a0, b0)}); make the splits disjoint, e.g. end {a}_range before "
                    f"{b}_range starts."
                )
