"""Tests of the synthetic causal data generator, its reader and its datamodule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_climate.datamodules.causal_synthetic import (
    CausalSyntheticDataModule,
    blocked_window_starts,
)
from lightning_climate.datasets.causal_synthetic import (
    generate_causal_synthetic,
    read_causal_synthetic,
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("causal") / "data.npz"
    return generate_causal_synthetic(
        path,
        num_latents=5,
        num_lags=2,
        height=6,
        width=7,
        num_timesteps=3000,
        edge_density=0.3,
        seed=3,
    )


def test_mixing_is_a_non_negative_partition_with_orthonormal_columns(data_file: Path) -> None:
    data = read_causal_synthetic(data_file)
    mixing = data["mixing"][0]
    assert mixing.shape == (42, 5)
    assert (mixing >= 0).all()
    assert ((mixing > 0).sum(1) == 1).all()  # every cell has exactly one latent parent
    np.testing.assert_allclose(mixing.T @ mixing, np.eye(5), atol=1e-6)
    assert data["params"]["seed"] == 3 and data["x"].shape == (3000, 1, 6, 7)


def test_latents_follow_the_stored_autoregression(data_file: Path) -> None:
    data = read_causal_synthetic(data_file)
    z, coef, graph = data["latents"].astype(np.float64), data["coefficients"], data["graph"]
    assert ((coef != 0) == graph.astype(bool)).all()
    # Least squares of z_t on (z_{t-1}, z_{t-2}) recovers the coefficients; the shocks have unit variance.
    design = np.concatenate([z[1:-1], z[:-2]], axis=1)
    fit, *_ = np.linalg.lstsq(design, z[2:], rcond=None)
    np.testing.assert_allclose(fit.reshape(2, 5, 5), coef, atol=0.08)
    residual = z[2:] - design @ fit
    np.testing.assert_allclose(residual.std(0), 1.0, atol=0.05)


def test_observations_are_mixing_times_latents_plus_noise(data_file: Path) -> None:
    data = read_causal_synthetic(data_file)
    x = data["x"].reshape(3000, -1)
    noise = x - data["latents"] @ data["mixing"][0].T
    assert abs(noise.std() - 0.2) < 0.01


def test_generator_is_deterministic_and_checks_arguments(tmp_path: Path, data_file: Path) -> None:
    again = generate_causal_synthetic(
        tmp_path / "again.npz",
        num_latents=5,
        num_lags=2,
        height=6,
        width=7,
        num_timesteps=3000,
        edge_density=0.3,
        seed=3,
    )
    assert np.array_equal(read_causal_synthetic(again)["x"], read_causal_synthetic(data_file)["x"])
    with pytest.raises(ValueError, match="edge_density must be in"):
        generate_causal_synthetic(tmp_path / "bad.npz", edge_density=0.0)
    with pytest.raises(ValueError, match="use a larger grid"):
        generate_causal_synthetic(tmp_path / "bad.npz", num_latents=10, height=3, width=3)
    assert not (tmp_path / "bad.npz").exists()


def test_reader_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match=r"missing\.npz does not exist.*prepare_data"):
        read_causal_synthetic(missing)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros((3, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"foreign\.npz lacks .*mixing.*run prepare_data"):
        read_causal_synthetic(foreign)


def test_blocked_split_has_no_shared_time_steps() -> None:
    train, val, test, train_ranges = blocked_window_starts(95, 40, 3, (0.8, 0.1, 0.1))
    covered = [set().union(*(range(s, s + 3) for s in starts)) for starts in (train, val, test)]
    assert (
        not (covered[0] & covered[1])
        and not (covered[0] & covered[2])
        and not (covered[1] & covered[2])
    )
    assert train_ranges == [(0, 32), (40, 72), (80, 92)]
    assert train[:3] == [0, 1, 2] and max(train) == 89
    assert val == [32, 33, 72, 73]  # parts of 4 steps hold 2 windows of 3


def _small_datamodule(root: Path, **kwargs: object) -> CausalSyntheticDataModule:
    args: dict = {
        "num_latents": 3,
        "height": 4,
        "width": 4,
        "num_timesteps": 400,
        "block_length": 100,
        "window_length": 3,
    }
    return CausalSyntheticDataModule(root=root, **(args | kwargs))


def test_datamodule_missing_data_without_generate_names_root_and_the_fix(tmp_path: Path) -> None:
    dm = _small_datamodule(tmp_path / "none")
    assert not dm.generate  # generation is opt-in
    for call in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(
            FileNotFoundError,
            match=r"no causal synthetic data file at .*none/causal_synthetic\.npz\. Point `root` at "
            r"your copy, or set generate=True",
        ):
            call()
    assert not (tmp_path / "none").exists()


def test_datamodule_splits_raw_windows_with_train_stats_and_round_trips(tmp_path: Path) -> None:
    dm = _small_datamodule(tmp_path, batch_size=8, generate=True, data_seed=5)
    with pytest.raises(FileNotFoundError, match="set generate=True"):
        dm.setup("fit")
    dm.prepare_data()
    dm.setup("fit")
    data = read_causal_synthetic(dm.path)
    assert data["params"]["seed"] == 5  # data_seed seeds the generator
    raw = data["x"]
    train_values = np.concatenate([raw[b : b + 80] for b in range(0, 400, 100)])
    stats = dm.train_statistics()
    assert set(stats) == {"x_mean", "x_std"}
    assert stats["x_mean"].item() == pytest.approx(float(train_values.mean()), rel=1e-5)
    assert stats["x_std"].item() == pytest.approx(float(train_values.std()), rel=1e-5)
    assert stats["x_mean"].item() != pytest.approx(float(raw.mean()), rel=1e-5)
    assert (
        len(dm.train_dataset) == 4 * 78
        and len(dm.val_dataset) == 4 * 8
        and len(dm.test_dataset) == 4 * 8
    )
    sample = dm.val_dataset[1]
    assert sample["x"].shape == (3, 1, 4, 4) and int(sample["index"]) == 81
    torch.testing.assert_close(sample["x"], torch.as_tensor(raw[81:84]))  # raw, not standardised
    graph, mixing = dm.ground_truth()
    assert graph.shape == (1, 3, 3) and mixing.shape == (1, 16, 3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 3, 1, 4, 4)

    other = _small_datamodule(tmp_path, data_seed=5)
    saved = {"train_statistics": {"x_mean": torch.tensor(1.5), "x_std": torch.tensor(2.0)}}
    other.load_state_dict(saved)
    other.setup("fit")
    assert other.state_dict() == saved  # restored statistics are not recomputed by setup
    torch.testing.assert_close(other.val_dataset[1]["x"], torch.as_tensor(raw[81:84]))
    with pytest.raises(
        ValueError, match=r"'x_mean' has shape \(3,\), this configuration expects \(\)"
    ):
        other.load_state_dict(
            {"train_statistics": {"x_mean": torch.zeros(3), "x_std": torch.ones(3)}}
        )


def test_datamodule_refuses_a_file_made_with_other_arguments(tmp_path: Path) -> None:
    CausalSyntheticDataModule(
        root=tmp_path, num_latents=3, height=4, width=4, num_timesteps=200, generate=True
    ).prepare_data()
    dm = CausalSyntheticDataModule(
        root=tmp_path, num_latents=4, height=4, width=4, num_timesteps=200
    )
    with pytest.raises(
        ValueError, match=r"other arguments.*'num_latents': \(3, 4\).*Delete the file"
    ):
        dm.setup("fit")
    with pytest.raises(ValueError, match="leave a training share"):
        CausalSyntheticDataModule(root=tmp_path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="block_length"):
        CausalSyntheticDataModule(root=tmp_path, block_length=2, window_length=3)
