"""Difficulty analysis: synthetic checks of each statistic, and real runs (3 seeds x 2 architectures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_climate.analysis.difficulty import (
    ScoreRuns,
    classify_architecture,
    consistency_table,
    fingerprint,
    load_runs,
    main,
    min_attainable_p,
    pca,
    spearman,
    variance_decomposition,
)
from lightning_climate.callbacks import DifficultyScores


def synthetic_runs(seed: int = 0, n: int = 200, sensitive: int = 10) -> ScoreRuns:
    """5 runs each of 2 architectures; examples 0..sensitive-1 are hard for 'a' and easy for 'b'."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    groups = ["a"] * 5 + ["b"] * 5
    loss = np.stack([difficulty + 0.3 * rng.normal(size=n) for _ in groups])
    loss[:5, :sensitive] += 2.0
    loss[5:, :sensitive] -= 2.0
    el2n = loss + 0.1 * rng.normal(size=loss.shape)
    return ScoreRuns({"loss": loss, "el2n": el2n}, groups, [0, 1, 2, 3, 4] * 2, np.arange(n))


def test_spearman_with_ties_matches_scipy() -> None:
    from scipy.stats import spearmanr

    a = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    b = np.array([2.0, 1.0, 3.0, 3.0, 6.0, 7.0])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman(a, np.append(b[:-1], np.nan)) == pytest.approx(
        spearmanr(a[:-1], b[:-1]).statistic
    )


def test_variance_decomposition_sums_to_one_and_finds_components() -> None:
    rng = np.random.default_rng(0)
    example = rng.normal(size=500)
    groups = ["a"] * 4 + ["b"] * 4
    pure = np.stack([example for _ in groups])
    parts = variance_decomposition(pure, groups)
    assert parts == pytest.approx({"example": 1.0, "architecture": 0.0, "seed": 0.0}, abs=1e-12)
    # architecture b reverses the order of the examples: no example effect left at all
    flipped = np.stack([example if g == "a" else -example for g in groups])
    parts = variance_decomposition(flipped, groups)
    assert parts == pytest.approx({"example": 0.0, "architecture": 1.0, "seed": 0.0}, abs=1e-12)
    # unit seed noise: expected sums of squares per example 1 + 1/8, 1/4 - 1/8 and 1 - 1/4 (of 2)
    noisy = pure + rng.normal(size=pure.shape)
    parts = variance_decomposition(noisy, groups)
    assert sum(parts.values()) == pytest.approx(1.0)
    expected = {"example": 0.5625, "architecture": 0.0625, "seed": 0.375}
    assert parts == pytest.approx(expected, abs=0.03)


def test_consistency_table_on_synthetic_runs() -> None:
    rows = {r["score"]: r for r in consistency_table(synthetic_runs())}
    loss = rows["loss"]
    assert loss["runs"] == 10
    assert 0.8 < float(loss["within_arch"]) <= 1.0
    assert float(loss["across_arch"]) < float(loss["within_arch"])  # the planted sensitive examples
    assert float(loss["split_half"]) > float(
        loss["within_arch"]
    )  # averaging runs raises reliability
    r1 = float(loss["within_arch"])
    assert float(loss["runs_for_0.9"]) == pytest.approx(9 * (1 - r1) / r1)
    assert sum(
        float(loss[k]) for k in ("var_example", "var_architecture", "var_seed")
    ) == pytest.approx(1.0)


def test_pca_single_direction() -> None:
    runs = synthetic_runs()
    result = pca(runs)
    assert result.names == ["loss", "el2n"]
    assert result.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert result.explained_variance_ratio[0] > 0.99  # el2n is the loss plus tiny noise
    np.testing.assert_allclose(result.loadings[0], [1 / np.sqrt(2)] * 2, atol=1e-3)


def test_fingerprint_finds_planted_examples() -> None:
    runs = synthetic_runs()
    fp = fingerprint(runs, num_permutations=499, seed=0)
    # 5 vs 5 runs: 126 distinct splits, the observed one and its mirror give p >= 2/126 or so
    assert np.all(fp["p_value"][:10] <= 0.03)
    # the permutation p-value cannot fall below ~1/126 here, so BH over 200 examples stays near
    # 0.15: few runs per architecture limit what can be called significant after correction
    assert fp["q_value"][:10].max() <= fp["q_value"][10:].min()
    # on raw values the other examples follow the null (uniform p); ranks would shift them a little,
    # because the planted examples move every other example's rank by up to 10 places
    raw = fingerprint(runs, num_permutations=499, seed=0, transform="raw")
    assert np.mean(raw["p_value"][10:] <= 0.05) < 0.1
    assert np.all(raw["p_value"][:10] <= 0.03)
    assert set(np.argsort(fp["statistic"])[::-1][:10].tolist()) == set(range(10))
    assert np.all(fp["q_value"] >= fp["p_value"])
    assert classify_architecture(runs, top_k=10) == 1.0
    with pytest.raises(ValueError, match="at least two architectures"):
        fingerprint(ScoreRuns(runs.scores, ["a"] * 10, runs.seeds, runs.index))


def test_min_attainable_p() -> None:
    assert min_attainable_p(["a"] * 3 + ["b"] * 3) == pytest.approx(
        0.1
    )  # 20 splits / 2 label swaps
    assert min_attainable_p(["a"] * 5 + ["b"] * 5) == pytest.approx(1 / 126)
    assert min_attainable_p(["a"] * 2 + ["b"] * 3) == pytest.approx(1 / 10)
    # the test reaches that floor on the planted examples
    fp = fingerprint(synthetic_runs(), num_permutations=2000, seed=1)
    assert fp["p_value"][:10].min() == pytest.approx(1 / 126, rel=0.35)


def test_fingerprint_statistic_equals_scaled_mean_difference() -> None:
    runs = synthetic_runs()
    fp = fingerprint(runs, num_permutations=1, transform="raw")
    x = np.stack([(v - v.mean()) / v.std() for v in runs.scores.values()], axis=2)
    diff = np.linalg.norm(x[:5].mean(0) - x[5:].mean(0), axis=1)
    np.testing.assert_allclose(fp["statistic"], diff * np.sqrt(5 * 5) / 10)


# --------------------------------------------------------------- real runs on digits


class Digits(Dataset[dict[str, Tensor]]):
    def __init__(self, n: int = 240) -> None:
        digits = load_digits()
        self.x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
        self.y = torch.tensor(digits.target[:n], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


class DigitsData(LightningDataModule):
    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        return DataLoader(Digits(), batch_size=32, shuffle=True)


class Net(LightningModule):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        if model == "mlp":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        else:
            self.net = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(128, 10),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    files = []
    for model in ("mlp", "cnn"):
        for seed in (0, 1, 2):
            seed_everything(seed)
            path = root / f"{model}_{seed}.zarr"
            callback = DifficultyScores(
                scores=["loss", "accuracy", "margin", "el2n", "forgetting"], path=str(path)
            )
            trainer = Trainer(
                max_epochs=3,
                accelerator="cpu",
                callbacks=[callback],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=root,
            )
            trainer.fit(Net(model), DigitsData())
            files.append(path)
    return files


def test_load_runs_reduces_epochs(run_files: list[Path]) -> None:
    runs = load_runs(run_files)
    assert runs.groups == ["mlp"] * 3 + ["cnn"] * 3
    assert runs.seeds == [0, 1, 2, 0, 1, 2]
    assert runs.scores["loss"].shape == (6, 240)
    import xarray as xr

    with xr.open_zarr(run_files[0]) as ds:
        np.testing.assert_allclose(runs.scores["loss"][0], ds["loss"].values.mean(0))
        np.testing.assert_array_equal(runs.scores["forgetting"][0], ds["forgetting"].values[-1])
    with pytest.raises(ValueError, match="has no attribute 'arch'"):
        load_runs(run_files, group_by="arch")
    with pytest.raises(FileNotFoundError, match="train with the DifficultyScores callback"):
        load_runs([run_files[0], run_files[0].with_name("missing.zarr")])


def test_consistency_on_real_runs(run_files: list[Path]) -> None:
    rows = {r["score"]: r for r in consistency_table(load_runs(run_files))}
    # seeds of one architecture agree on which digits are hard; across architectures a bit less
    assert float(rows["loss"]["within_arch"]) > 0.5
    assert float(rows["el2n"]["within_arch"]) > 0.5
    assert -1.0 <= float(rows["loss"]["across_arch"]) <= float(rows["loss"]["within_arch"]) + 0.05


def test_cli_writes_plots_and_tables(
    run_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "analysis"
    main([*map(str, run_files), "--out", str(out), "--permutations", "50"])
    for name in ("consistency.png", "score_correlation.png", "pca.png", "manhattan.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "consistency.csv").read_text().splitlines()
    assert table[0].startswith("score,runs,within_arch,across_arch,split_half")
    assert len(table) == 1 + 5
    fp = (out / "fingerprint.csv").read_text().splitlines()
    assert len(fp) == 1 + 240
    printed = capsys.readouterr().out
    assert "| loss | 6 |" in printed and "architecture accuracy" in printed
    assert "smallest attainable permutation p with these runs = 0.1 " in printed


def test_module_entry_point_help() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lightning_climate.analysis.difficulty", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--group-by" in out and "--permutations" in out
