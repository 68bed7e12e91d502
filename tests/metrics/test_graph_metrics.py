"""Tests of the graph-recovery metrics, against sklearn and under 2-process DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from sklearn.metrics import f1_score, precision_score, recall_score
from torch.utils.data import DataLoader, Dataset

from lightning_climate.metrics.graph import (
    EdgeF1Score,
    EdgePrecision,
    EdgeRecall,
    StructuralHammingDistance,
    edge_counts,
    match_latents,
    permute_graph,
)


def _graphs(
    seed: int, count: int, shape: tuple[int, ...] = (2, 5, 5)
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(shape, generator=gen), (torch.rand(shape, generator=gen) < 0.3).float())
        for _ in range(count)
    ]


def test_metrics_match_sklearn_over_several_graphs() -> None:
    pairs = _graphs(0, 4)
    metrics = [StructuralHammingDistance(), EdgePrecision(), EdgeRecall(), EdgeF1Score()]
    for pred, true in pairs:
        for metric in metrics:
            metric.update(pred, true)
    pred_all = np.concatenate([(p >= 0.5).numpy().ravel() for p, _ in pairs])
    true_all = np.concatenate([t.numpy().ravel() for _, t in pairs]).astype(bool)
    shd = np.mean([((p >= 0.5).numpy() != t.numpy().astype(bool)).sum() for p, t in pairs])
    values = [float(m.compute()) for m in metrics]
    expected = [
        shd,
        precision_score(true_all, pred_all),
        recall_score(true_all, pred_all),
        f1_score(true_all, pred_all),
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_edge_counts_threshold_and_edge_cases() -> None:
    pred = torch.tensor([[0.2, 0.7], [0.5, 0.0]])
    true = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert edge_counts(pred, true).tolist() == [1, 1, 1, 1]
    assert edge_counts(pred, true, threshold=0.8).tolist() == [0, 0, 2, 2]
    empty = torch.zeros(2, 2)
    precision, f1, shd = EdgePrecision(), EdgeF1Score(), StructuralHammingDistance()
    for metric in (precision, f1, shd):
        metric.update(empty, true)
    assert float(precision.compute()) == 0.0
    assert float(f1.compute()) == 0.0
    assert float(shd.compute()) == 2.0
    with pytest.raises(ValueError, match="differ in shape; align them"):
        edge_counts(torch.zeros(2, 3, 3), torch.zeros(3, 3))


def test_match_latents_recovers_a_known_permutation_per_variable() -> None:
    gen = torch.Generator().manual_seed(1)
    true = torch.zeros(2, 12, 4)
    for v in range(2):
        for cell in range(12):
            true[v, cell, cell % 4] = 1.0 + torch.rand(1, generator=gen).item()
    perm_v = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 3, 0, 2])]
    learned = torch.stack([0.5 * true[v][:, perm_v[v].argsort()] for v in range(2)])
    learned = learned + 0.01 * torch.rand(learned.shape, generator=gen)
    perm = match_latents(learned, true)
    # True latent j of variable v is learned latent perm_v[v][j]; nodes are offset by 4 for v = 1.
    assert perm.tolist() == perm_v[0].tolist() + (perm_v[1] + 4).tolist()
    for v in range(2):
        torch.testing.assert_close(
            learned[v][:, perm[4 * v : 4 * v + 4] - 4 * v], 0.5 * true[v], atol=0.011, rtol=0
        )
    with pytest.raises(ValueError, match="use as many latents per variable"):
        match_latents(learned[:, :, :3], true)


def test_permute_graph_relabels_nodes() -> None:
    graph = torch.zeros(1, 3, 3)
    graph[0, 2, 0] = 1  # learned node 2 -> learned node 0
    perm = torch.tensor([2, 0, 1])  # true 0 = learned 2, true 1 = learned 0
    aligned = permute_graph(graph, perm)
    assert aligned[0, 0, 1] == 1 and aligned.sum() == 1


# ---------------------------------------------------------------------------- DDP
class _IndexDataset(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(index)}


def _pair(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _graphs(100 + index, 1)[0]


class _GraphMetricModule(LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(1, 1)
        self.metrics = torch.nn.ModuleDict(
            {
                "SHD": StructuralHammingDistance(),
                "precision": EdgePrecision(),
                "recall": EdgeRecall(),
                "F1": EdgeF1Score(),
            }
        )

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        for index in batch["index"].tolist():
            pred, true = _pair(index)
            for metric in self.metrics.values():
                metric.update(pred, true)

    def on_test_epoch_end(self) -> None:
        values = {name: float(metric.compute()) for name, metric in self.metrics.items()}
        if self.trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(values))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_IndexDataset(), batch_size=2)


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform == "win32", reason="gloo ddp_spawn test runs on POSIX")
def test_graph_metrics_ddp_equal_single_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    results = []
    for devices in (1, 2):
        out = tmp_path / f"metrics_{devices}.json"
        kwargs = {**trainer_kwargs, "devices": devices}
        if devices == 2:
            kwargs["strategy"] = "ddp_spawn"
        Trainer(**kwargs).test(_GraphMetricModule(str(out)))
        results.append(json.loads(out.read_text()))
    assert results[0] == pytest.approx(results[1], rel=1e-12)
    assert results[0]["SHD"] > 0  # the graphs differ, so the comparison is not trivial
