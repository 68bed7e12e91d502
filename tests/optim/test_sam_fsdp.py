"""SAM on sharded parameters (FSDP2 ``fully_shard``, DTensor) in two CPU processes over gloo.

Lightning's FSDP strategies need CUDA, so the algorithm is tested with ``torch.distributed``
directly; ``benchmarks/sam_fsdp_gpu.py`` runs the Lightning path on GPUs.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from lightning_climate.optim import SAM

STEPS = 3
VARIANTS: dict[str, dict[str, Any]] = {
    "sam": {"rho": 0.5},
    "asam": {"rho": 1.0, "adaptive": True},
    "sam-on": {"rho": 1.0, "norm_only": True},
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def train(model: nn.Module, x: Tensor, y: Tensor, **sam: Any) -> None:
    opt = SAM(
        model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), **sam
    ).bind(model)
    for _ in range(STEPS):

        def closure() -> Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def worker(rank: int, port: int, directory: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        x, y = data()
        results: dict[str, Any] = {}
        for name, sam in VARIANTS.items():
            model = make_model()
            for layer in (model[0], model[3]):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            # each rank trains on its half; FSDP2 averages the gradient shards of both halves
            train(model, x[rank::2], y[rank::2], **sam)
            results[name] = {
                n: (p.full_tensor(), tuple(p.to_local().shape)) for n, p in model.named_parameters()
            }
        try:
            SAM(model.parameters(), perturbation="local").step(lambda: torch.tensor(0.0))
        except RuntimeError as error:
            results["local_error"] = str(error)
        torch.save(results, directory / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_fsdp2_sharded_sam_equals_unsharded(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    x, y = data()
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, sam in VARIANTS.items():
            model = make_model()
            train(model, x, y, **sam)  # one process, the whole batch
            for n, p in model.named_parameters():
                full, local_shape = results[name][n]
                if p.dim() > 0 and p.shape[0] > 1:  # really sharded: half the rows on this rank
                    assert local_shape[0] == p.shape[0] // 2, n
                torch.testing.assert_close(
                    full, p.detach(), atol=1e-6, rtol=1e-6, msg=f"{name} {n}"
                )
        assert "not available for sharded" in results["local_error"]


@pytest.mark.slow
@pytest.mark.ddp
def test_lightning_model_parallel_strategy_equals_one_device(tmp_path: Path) -> None:
    # Lightning's ModelParallelStrategy relaunches the script it runs in, so run it as a script
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sam_fsdp_lightning.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--variants",
            "SAM",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=True,
    ).stdout
    diffs = [float(d) for d in re.findall(r"one device\| = (\S+)", out)]
    assert len(diffs) == 2  # optimizer and callback routes
    assert max(diffs) < 1e-5
