import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_utils import free_port

from lightning_climate.metrics import RelativeL2Error, relative_l2_error


def reference(preds: torch.Tensor, target: torch.Tensor) -> float:
    values = [
        (torch.linalg.vector_norm(p - t) / torch.linalg.vector_norm(t)).item()
        for p, t in zip(preds, target, strict=True)
    ]
    return sum(values) / len(values)


def test_value_matches_per_sample_reference() -> None:
    torch.manual_seed(0)
    preds, target = torch.randn(10, 2, 5, 5), torch.randn(10, 2, 5, 5)
    metric = RelativeL2Error()
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 10)):  # uneven batches
        metric.update(preds[chunk], target[chunk])
    assert metric.compute().item() == pytest.approx(reference(preds, target), rel=1e-6)
    assert relative_l2_error(preds, target).item() == pytest.approx(
        reference(preds, target), rel=1e-6
    )
    assert relative_l2_error(2 * target, target).item() == pytest.approx(1.0)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        RelativeL2Error().update(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batch dimension"):
        relative_l2_error(torch.zeros(3), torch.zeros(3))


def _worker(rank: int, port: int, preds: torch.Tensor, target: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    metric = RelativeL2Error()
    # rank 0 gets 3 samples, rank 1 gets 4: uneven shards
    shard = slice(0, 3) if rank == 0 else slice(3, 7)
    metric.update(preds[shard], target[shard])
    value = metric.compute()
    if rank == 0:
        torch.save(value, out)
    dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_equals_single_process(tmp_path: Path) -> None:
    torch.manual_seed(1)
    preds, target = torch.randn(7, 1, 4, 4), torch.randn(7, 1, 4, 4)
    out = tmp_path / "value.pt"
    mp.spawn(_worker, args=(free_port(), preds, target, str(out)), nprocs=2, join=True)
    single = RelativeL2Error()
    single.update(preds, target)
    assert torch.load(out).item() == pytest.approx(single.compute().item(), rel=1e-6)
