from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_utils import free_port

from lightning_climate.layers import AdditiveConstraint
from lightning_climate.metrics import ConstraintViolation


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uneven batches (sizes 3, 2, 1, 2) with non-zero violation."""
    g = torch.Generator().manual_seed(0)
    out = []
    for b in (3, 2, 1, 2):
        out.append((torch.randn(b, 2, 8, 8, generator=g), torch.randn(b, 2, 2, 2, generator=g)))
    return out


def _numpy_reference() -> tuple[float, float]:
    diffs = []
    for pred, lr in _batches():
        p = pred.double().numpy()
        pooled = p.reshape(p.shape[0], 2, 2, 4, 2, 4).mean(axis=(3, 5))
        diffs.append(np.abs(pooled - lr.double().numpy()).ravel())
    d = np.concatenate(diffs)
    return float(d.mean()), float(d.max())


def test_matches_numpy_reference() -> None:
    mean, mx = ConstraintViolation("mean"), ConstraintViolation("max")
    for pred, lr in _batches():
        mean.update(pred, lr)
        mx.update(pred, lr)
    ref_mean, ref_max = _numpy_reference()
    assert mean.compute().item() == pytest.approx(ref_mean, rel=1e-12)
    assert mx.compute().item() == pytest.approx(ref_max, rel=1e-12)


def test_zero_for_constrained_prediction_and_for_nearest_upsampling() -> None:
    pred, lr = _batches()[0]
    metric = ConstraintViolation("max")
    metric.update(AdditiveConstraint()(pred, lr), lr)
    assert metric.compute() < 1e-6
    metric.reset()
    metric.update(lr.repeat_interleave(4, -2).repeat_interleave(4, -1), lr)
    assert metric.compute() == 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="reduction must be"):
        ConstraintViolation("median")  # type: ignore[arg-type]
    metric = ConstraintViolation()
    with pytest.raises(ValueError, match="integer multiple"):
        metric.update(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 1, 1))


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mean, mx = ConstraintViolation("mean"), ConstraintViolation("max")
    for i, (pred, lr) in enumerate(_batches()):
        if i % world == rank:  # rank 0 gets batches of 3 and 1 samples, rank 1 of 2 and 2
            mean.update(pred, lr)
            mx.update(pred, lr)
    values = torch.stack([mean.compute(), mx.compute()])
    torch.save(values, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.skipif(sys.platform == "win32", reason="gloo spawn test")
def test_ddp_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_mean, ref_max = _numpy_reference()
    for rank in range(2):
        values = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert values[0].item() == pytest.approx(ref_mean, rel=1e-12)
        assert values[1].item() == pytest.approx(ref_max, rel=1e-12)
