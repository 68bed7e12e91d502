"""Read many runs' difficulty scores, one record at a time, into one value per run and example.

Reads the Zarr stores written by :class:`~lightning_climate.callbacks.DifficultyScores` and the
NetCDF files of its earlier versions. A store is never loaded whole: every score is reduced over
the recorded epochs while reading one record (one chunk) at a time, so memory is two float64
values per example and score while reading, plus the result, ``runs x examples`` per score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from lightning_climate.utils import lazy_import

__all__ = ["ScoreRuns", "load_runs", "open_scores"]

#: cumulative scores: their last record already summarises the run.
LAST_RECORD = ("forgetting", "first_learned", "first_unforgettable", "unforgettable", "vog")


@dataclass
class ScoreRuns:
    """Scores of ``R`` runs on the same ``N`` examples.

    Attributes:
        scores: score name -> ``(R, N)`` array (one value per run and example).
        groups: architecture (or other grouping attribute) of each run.
        seeds: seed of each run (``-1`` when unknown).
        index: ``(N,)`` example indices shared by all runs.
    """

    scores: dict[str, np.ndarray]
    groups: list[str]
    seeds: list[int]
    index: np.ndarray

    def transformed(self, transform: Literal["rank", "raw"] = "rank") -> dict[str, np.ndarray]:
        """Per-run ranks scaled to [0, 1] (``"rank"``), or the raw values."""
        if transform == "raw":
            return self.scores
        out = {}
        for name, values in self.scores.items():
            ranks = rankdata(values, axis=1, nan_policy="omit")
            out[name] = (ranks - 1) / max(values.shape[1] - 1, 1)
        return out


def open_scores(path: str | Path) -> Any:
    """Open a score store (``*.zarr``) or an older NetCDF file lazily as an ``xarray.Dataset``."""
    xr = lazy_import("xarray")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Score file {path} not found; train with the DifficultyScores callback (its `path` "
            "argument) to write it."
        )
    if path.is_dir():
        return xr.open_zarr(path, chunks=None)
    return xr.open_dataset(path, engine="h5netcdf", chunks=None)


def _reduce(ds: Any, name: str, rows: np.ndarray, path: str | Path) -> np.ndarray:
    """Mean over the records where the score was computed, or its last such record (cumulative)."""
    variable = ds[name].variable
    if name in LAST_RECORD:
        for row in rows[::-1]:
            values = np.asarray(variable[int(row)].values, dtype=np.float64)
            if np.isfinite(values).any():
                return values
    else:
        total = np.zeros(variable.shape[1])
        count = np.zeros(variable.shape[1])
        for row in rows:
            values = np.asarray(variable[int(row)].values, dtype=np.float64)
            finite = np.isfinite(values)
            if finite.any():
                total += np.where(finite, values, 0.0)
                count += finite
        if count.any():
            return np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    raise ValueError(f"{path}: score '{name}' was never computed in the chosen epochs.")


def load_runs(
    paths: Sequence[str | Path],
    scores: Sequence[str] | None = None,
    group_by: str = "architecture",
    epochs: Sequence[int] | None = None,
) -> ScoreRuns:
    """Read score stores and reduce each score over epochs to one value per run and example.

    Args:
        paths: Zarr stores (or NetCDF files of earlier versions) written by ``DifficultyScores``.
        scores: scores to keep; default: those present in every file.
        group_by: file attribute naming the architecture (or any grouping) of a run.
        epochs: keep only these recorded epochs before reducing; default all.

    Raises:
        FileNotFoundError: for a missing file; ValueError for files over different examples or
            without the grouping attribute.
    """
    if len(paths) < 2:
        raise ValueError(f"The analysis needs at least 2 score files, got {len(paths)}.")
    datasets = [open_scores(path) for path in paths]
    try:
        names = scores or sorted(set.intersection(*(set(ds.data_vars) for ds in datasets)))
        index = datasets[0]["index"].values
        values: dict[str, list[np.ndarray]] = {name: [] for name in names}
        groups, seeds = [], []
        for path, ds in zip(paths, datasets, strict=True):
            if not np.array_equal(ds["index"].values, index):
                raise ValueError(
                    f"{path} scores other examples than {paths[0]}; use runs on one split."
                )
            if group_by not in ds.attrs:
                raise ValueError(
                    f"{path} has no attribute '{group_by}'; choose --group-by from "
                    f"{sorted(ds.attrs)} or pass run_attrs={{'architecture': ...}} to DifficultyScores."
                )
            groups.append(str(ds.attrs[group_by]))
            seeds.append(int(ds.attrs.get("seed", -1)))
            recorded = ds["epoch"].values
            rows = np.flatnonzero(
                np.isin(recorded, list(epochs))
                if epochs is not None
                else np.ones(len(recorded), bool)
            )
            for name in names:
                if name not in ds:
                    raise ValueError(
                        f"{path} has no score '{name}'; it has {sorted(ds.data_vars)}."
                    )
                values[name].append(_reduce(ds, name, rows, path))
    finally:
        for ds in datasets:
            ds.close()
    return ScoreRuns({n: np.stack(v) for n, v in values.items()}, groups, seeds, index)
