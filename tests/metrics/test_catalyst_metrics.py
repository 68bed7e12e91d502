from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import OC20_SAMPLE
from ddp_utils import free_port
from torchmetrics import MetricCollection

from lightning_climate.metrics import (
    EnergyForceWithinThreshold,
    EnergyMAE,
    EnergyWithinThreshold,
    ForceCosineSimilarity,
    ForceMAE,
)


def make_inputs(seed: int = 0, graphs: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    natoms = torch.randint(2, 6, (graphs,), generator=g)
    batch = torch.repeat_interleave(torch.arange(graphs), natoms)
    n = int(natoms.sum())
    energy_target = torch.randn(graphs, generator=g)
    energy_pred = energy_target + torch.randn(graphs, generator=g) * 0.03
    force_target = torch.randn(n, 3, generator=g)
    force_pred = force_target + torch.randn(n, 3, generator=g) * 0.008
    force_mask = torch.rand(n, generator=g) > 0.3
    return {
        "energy_pred": energy_pred,
        "energy_target": energy_target,
        "force_pred": force_pred,
        "force_target": force_target,
        "force_mask": force_mask,
        "batch": batch,
    }


def reference(x: dict[str, torch.Tensor]) -> dict[str, float]:
    e_err = (x["energy_pred"] - x["energy_target"]).abs().numpy()
    m = x["force_mask"].numpy()
    fp, ft = x["force_pred"].numpy()[m], x["force_target"].numpy()[m]
    cos = (fp * ft).sum(1) / np.linalg.norm(fp, axis=1) / np.linalg.norm(ft, axis=1)
    worst = np.zeros(len(e_err))
    comp = np.abs(x["force_pred"].numpy() - x["force_target"].numpy()).max(1)
    for atom, graph in enumerate(x["batch"].tolist()):
        if m[atom]:
            worst[graph] = max(worst[graph], comp[atom])
    return {
        "mae": float(e_err.mean()),
        "ewt": float((e_err < 0.02).mean()),
        "fmae": float(np.abs(fp - ft).mean()),
        "fcos": float(cos.mean()),
        "efwt": float(((e_err < 0.02) & (worst < 0.03)).mean()),
    }


def collection() -> MetricCollection:
    return MetricCollection(
        {
            "mae": EnergyMAE(),
            "ewt": EnergyWithinThreshold(),
            "fmae": ForceMAE(),
            "fcos": ForceCosineSimilarity(),
            "efwt": EnergyForceWithinThreshold(),
        }
    )


def split(x: dict[str, torch.Tensor], graphs: list[int]) -> dict[str, torch.Tensor]:
    atom_mask = torch.isin(x["batch"], torch.tensor(graphs))
    new_batch = torch.unique(x["batch"][atom_mask], return_inverse=True)[1]
    return {
        "energy_pred": x["energy_pred"][graphs],
        "energy_target": x["energy_target"][graphs],
        "force_pred": x["force_pred"][atom_mask],
        "force_target": x["force_target"][atom_mask],
        "force_mask": x["force_mask"][atom_mask],
        "batch": new_batch,
    }


def test_values_match_a_numpy_reference_over_several_batches() -> None:
    x = make_inputs()
    metrics = collection()
    for chunk in ([0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]):
        metrics.update(**split(x, chunk))
    result = {k: float(v) for k, v in metrics.compute().items()}
    expected = reference(x)
    assert result == pytest.approx(expected, abs=1e-6)
    assert 0 < expected["ewt"] < 1 and 0 < expected["efwt"] <= expected["ewt"]


def test_zero_predictor_on_real_oc20() -> None:
    y = torch.tensor(np.load(OC20_SAMPLE)["y_relaxed"], dtype=torch.float32)
    mae, ewt = EnergyMAE(), EnergyWithinThreshold(0.02)
    mae.update(torch.zeros(3), y)
    ewt.update(torch.zeros(3), y)
    assert mae.compute().item() == pytest.approx(2.125673, abs=1e-5)
    assert ewt.compute().item() == 0.0


def test_ewt_threshold_is_strict_and_validated() -> None:
    metric = EnergyWithinThreshold(0.5)
    metric.update(torch.tensor([0.5, 0.25]), torch.tensor([0.0, 0.0]))
    assert metric.compute().item() == 0.5  # exactly 0.5 eV is not "within" 0.5 eV
    with pytest.raises(ValueError, match="threshold must be positive"):
        EnergyWithinThreshold(0)
    with pytest.raises(ValueError, match="forces must be"):
        ForceMAE().update(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="differ"):
        EnergyMAE().update(torch.zeros(3), torch.zeros(2))


def _worker(rank: int, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x = make_inputs()
    metrics = collection()
    mine = [0, 2, 4, 6, 8, 10, 11] if rank == 0 else [1, 3, 5, 7, 9]  # uneven shares
    metrics.update(**split(x, mine))
    result = {k: float(v) for k, v in metrics.compute().items()}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_two_processes_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(free_port()), str(tmp_path)), nprocs=2, join=True)
    expected = reference(make_inputs())
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(expected, abs=1e-6)
