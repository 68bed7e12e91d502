"""ERA5 downscaling datamodule: low/high-resolution pairs by block mean, split by date ranges."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_climate.datamodules.base import BaseDataModule, renamed_argument
from lightning_climate.datasets.era5 import ERA5Dataset, generate_era5

__all__ = ["ERA5DataModule"]


class ERA5DataModule(BaseDataModule):
    """Downscaling pairs from ERA5 files in physical units, split by date ranges.

    Samples are ``{"lr", "hr", "index", "time", "lat"}`` as documented in
    :mod:`lightning_climate.datasets.era5` (the same ``lr``/``hr`` keys as the Navier-Stokes
    datamodule). Splits are disjoint date ranges (no leakage between neighbouring hours).

    Contract with tasks: :attr:`channels` are the variable names (``t850``, ``t2m``),
    :attr:`latitudes` the latitudes of the grid rows, and :meth:`train_statistics` gives the
    per-channel ``hr_min``, ``hr_max``, ``hr_mean`` and ``hr_std`` of the training split's
    high-resolution fields, which tasks such as
    :class:`~lightning_climate.tasks.DownscalingTask` normalise with.

    Args:
        root: ERA5 files, directories or glob patterns (NetCDF in CDS or cfgrib naming, Zarr);
            with ``generate=True`` a folder into which ``prepare_data`` writes ERA5-format
            files (``era5_<year>.nc``) when it holds none.
        variables: ERA5 short names, e.g. ``["t2m"]`` or ``["t", "z"]``.
        levels: pressure levels (hPa) for pressure-level variables; default all in the files.
        factor: coarsening factor N (``hr`` is cropped to a multiple of N).
        train_range: inclusive ``[start, end]`` dates of the training split.
        val_range: dates of the validation split, or ``None`` for none.
        test_range: dates of the test split, or ``None`` for none.
        patch_size: high-resolution patch size (multiple of N), or ``None`` for full fields.
        batch_size: samples per batch.
        num_workers: DataLoader workers (each reopens the files lazily).
        seed: unused by the date split; kept for the common datamodule signature.
        generate: let ``prepare_data`` write generated ERA5-format files into the folder ``root``.
        generate_years: years of the generated files.
        data_seed: seed of the generated fields.
        paths: deprecated name of ``root``.
        normalization: deprecated; only ``"none"`` is accepted (tasks normalise).
        storage_options: fsspec options for Zarr URLs; ``None`` reads ``gs://`` and ``s3://``
            anonymously (see :class:`~lightning_climate.datasets.ERA5Dataset`).
        manifest: checksum list (``sha256sum``/``md5sum`` output) of the downloaded files, checked in
            ``prepare_data`` before anything is read (see :meth:`BaseDataModule.verify_manifest`).

    Raises:
        ValueError: if a date range ends before it starts or two ranges overlap.
    """

    data_name = "ERA5 files"
    statistics_arguments = "variables, levels"

    def __init__(
        self,
        root: str | Sequence[str] = "data/era5",
        variables: Sequence[str] = ("t2m",),
        levels: Sequence[float] | None = None,
        factor: int = 2,
        train_range: tuple[str, str] | None = None,
        val_range: tuple[str, str] | None = None,
        test_range: tuple[str, str] | None = None,
        patch_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        generate: bool = False,
        generate_years: Sequence[int] = (2000,),
        data_seed: int = 0,
        paths: str | Sequence[str] | None = None,
        normalization: Literal["none"] | None = None,
        storage_options: dict[str, Any] | None = None,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, manifest=manifest
        )
        root = renamed_argument(type(self).__name__, "paths", paths, "root", root)
        if normalization is not None:
            renamed_argument(type(self).__name__, "normalization", normalization, "(none)", None)
            if normalization != "none":
                raise ValueError(
                    f"ERA5DataModule(normalization={normalization!r}) is no longer supported: "
                    "samples are in physical units and tasks normalise with the training "
                    "statistics (DownscalingTask: min-max). Remove the argument."
                )
        if factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}.")
        if patch_size is not None and (patch_size < factor or patch_size % factor):
            raise ValueError(
                f"patch_size={patch_size} must be a positive multiple of factor={factor}."
            )
        self.root = [os.fspath(root)] if isinstance(root, str | os.PathLike) else list(root)
        self.variables = list(variables)
        self.levels = None if levels is None else list(levels)
        self.factor = factor
        self.ranges = {"train": train_range, "val": val_range, "test": test_range}
        _check_disjoint(self.ranges)
        self.storage_options = storage_options
        self.patch_size = patch_size
        self.generate = generate
        self.generate_years = [int(y) for y in generate_years]
        self.data_seed = data_seed

    def prepare_data(self) -> None:
        """With ``generate``, write ERA5-format files into ``root`` if it holds no ``.nc`` file."""
        if not self.generate:
            return
        if len(self.root) != 1:
            raise ValueError(
                f"generate=True writes into one folder; root lists {len(self.root)} entries."
            )
        folder = Path(self.root[0])
        if folder.is_dir() and any(folder.glob("*.nc")):
            return
        generate_era5(folder, years=self.generate_years, seed=self.data_seed)

    def _dataset(self, split: str) -> ERA5Dataset | None:
        time_range = self.ranges[split]
        if time_range is None and split != "train":
            return None
        return ERA5Dataset(
            self.root,
            self.variables,
            self.levels,
            self.factor,
            None if time_range is None else (str(time_range[0]), str(time_range[1])),
            self.patch_size,
            storage_options=self.storage_options,
        )

    def setup(self, stage: str) -> None:
        """Index the files and build the split datasets (no statistics are computed here)."""
        train = self._dataset("train")
        assert train is not None
        self.channels = list(train.channels)
        self.latitudes = torch.as_tensor(train.latitudes, dtype=torch.float32)
        self.train_dataset = train
        self.val_dataset = self._dataset("val")
        self.test_dataset = self._dataset("test")
        self.predict_dataset = self.test_dataset

    def compute_train_statistics(self) -> dict[str, Tensor]:
        """Per-channel ``hr_min``, ``hr_max``, ``hr_mean``, ``hr_std`` of the training fields (one pass)."""
        dataset = self.train_dataset
        assert isinstance(dataset, ERA5Dataset)
        lo = hi = total = squares = None
        count = 0
        for i in range(dataset.num_fields):
            flat = dataset.read_field(i).double().flatten(1)
            mins, maxs = flat.min(1).values, flat.max(1).values
            lo = mins if lo is None else torch.minimum(lo, mins)
            hi = maxs if hi is None else torch.maximum(hi, maxs)
            total = flat.sum(1) if total is None else total + flat.sum(1)
            squares = (flat**2).sum(1) if squares is None else squares + (flat**2).sum(1)
            count += flat.shape[1]
        if lo is None or hi is None or total is None or squares is None:
            raise ValueError(
                f"the training range {self.ranges['train']} selects no field of {self.root}; "
                "widen train_range."
            )
        mean = total / count
        std = (squares / count - mean**2).clamp_min(0).sqrt()
        return {"hr_min": lo, "hr_max": hi, "hr_mean": mean, "hr_std": std}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """One value per channel, once the channels are known."""
        if self.channels is None:
            return None
        c = (len(self.channels),)
        return {"hr_min": c, "hr_max": c, "hr_mean": c, "hr_std": c}


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
