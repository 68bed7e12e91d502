"""The difficulty analysis streams: blocks of examples and one record at a time give the dense results."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lightning_climate.analysis import difficulty_stats
from lightning_climate.analysis.difficulty import (
    ScoreRuns,
    classify_architecture,
    fingerprint,
    load_runs,
    pca,
)
from lightning_climate.io import RecordStore

OLD_FILE = Path(__file__).parents[1] / "data" / "difficulty" / "netcdf_v0.nc"


def runs_with_signal(n: int = 300) -> ScoreRuns:
    rng = np.random.default_rng(3)
    difficulty = rng.normal(size=n)
    groups = ["a"] * 4 + ["b"] * 4
    scores = {}
    for k, name in enumerate(["loss", "el2n", "margin"]):
        runs = np.stack([difficulty * (k + 1) + rng.normal(size=n) for _ in groups])
        runs[:4, :15] += 3.0
        scores[name] = runs
    scores["margin"][2, 7] = np.nan  # a missing value
    return ScoreRuns(scores, groups, list(range(8)), np.arange(n))


def test_blocked_statistics_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = runs_with_signal()
    whole = fingerprint(runs, num_permutations=250, seed=2)
    accuracy = classify_architecture(runs, top_k=10)
    monkeypatch.setattr(difficulty_stats, "BLOCK_BYTES", 8 * 100 * 3 * 7)  # blocks of 7 examples
    assert len(list(difficulty_stats._blocks(300, 3))) == 43
    blocked = fingerprint(runs, num_permutations=250, seed=2)
    for key in ("statistic", "p_value", "q_value"):
        np.testing.assert_allclose(blocked[key], whole[key], rtol=1e-12, err_msg=key)
    assert classify_architecture(runs, top_k=10) == accuracy == 1.0


def test_pca_equals_dense_svd() -> None:
    runs = runs_with_signal()
    result = pca(runs, transform="raw")
    matrix = np.stack([np.nanmean(v, 0) for v in runs.scores.values()], 1)
    matrix = matrix[np.isfinite(matrix).all(1)]
    z = (matrix - matrix.mean(0)) / matrix.std(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    np.testing.assert_allclose(result.explained_variance_ratio, s**2 / (s**2).sum(), rtol=1e-10)
    np.testing.assert_allclose(np.abs(result.loadings), np.abs(vt), atol=1e-10)
    assert (result.loadings[np.arange(3), np.abs(result.loadings).argmax(1)] > 0).all()


def test_old_netcdf_files_and_new_stores_read_alike(tmp_path: Path) -> None:
    """The NetCDF file of the previous version, and the same records in a store, give one result."""
    with xr.open_dataset(OLD_FILE, engine="h5netcdf") as old:
        old = old.load()
    store = RecordStore(tmp_path / "new.zarr")
    store.create(old["index"].values, dict(old.attrs))
    for i, (epoch, step) in enumerate(
        zip(old["epoch"].values, old["global_step"].values, strict=True)
    ):
        store.append(
            int(epoch), int(step), {n: old[n].values[i] for n in old.data_vars}, dict(old.attrs)
        )
    shutil.copy(OLD_FILE, tmp_path / "old_copy.nc")
    runs = load_runs([OLD_FILE, tmp_path / "new.zarr", tmp_path / "old_copy.nc"])
    assert runs.groups == ["linear"] * 3 and runs.index.tolist() == list(range(20))
    for name in ("loss", "accuracy", "el2n"):
        expected = old[name].values.mean(0)
        for r in range(3):
            np.testing.assert_array_equal(runs.scores[name][r], expected)
    only_last = load_runs([OLD_FILE, tmp_path / "new.zarr"], scores=["loss"], epochs=[1])
    np.testing.assert_array_equal(only_last.scores["loss"][1], old["loss"].values[1])
