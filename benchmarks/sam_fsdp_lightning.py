"""SAM under Lightning's ModelParallelStrategy (FSDP2 ``fully_shard``) equals the one-device run.

For each variant (SAM, ASAM, SAM-ON; the optimizer returned from ``configure_optimizers`` and the
callback) trains a small LayerNorm MLP for a few steps on one device, then sharded over
``--devices`` processes with ``fully_shard`` in ``configure_model`` (each process sees its share of
the same global batch), and prints the largest difference of the gathered weights. Written for
GPUs (``--accelerator gpu``); ``--accelerator cpu`` runs it over gloo (a slow test does, with one
variant; the algorithm alone is tested in ``tests/optim/test_sam_fsdp.py``).

    python benchmarks/sam_fsdp_lightning.py --accelerator gpu --devices 2
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_climate.callbacks import SharpnessAwareMinimization
from lightning_climate.optim import SAM

STEPS = 3
VARIANTS: dict[str, dict[str, Any]] = {
    "SAM": {"rho": 0.5},
    "ASAM": {"rho": 1.0, "adaptive": True},
    "SAM-ON": {"rho": 1.0, "norm_only": True},
}


class ShardedNet(LightningModule):
    """MLP with a LayerNorm; sharded with ``fully_shard`` when the strategy gives a device mesh."""

    def __init__(self, n_samples: int, batch_size: int, sam: dict[str, Any] | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 64), nn.LayerNorm(64), nn.Tanh(), nn.Linear(64, 1))
        g = torch.Generator().manual_seed(1)
        self.data = TensorDataset(
            torch.randn(n_samples, 4, generator=g), torch.randn(n_samples, 1, generator=g)
        )
        self.batch_size = batch_size
        self.sam = sam

    def configure_model(self) -> None:
        if self._device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[3]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
        return SAM(self.parameters(), sgd, **self.sam) if self.sam else sgd(self.parameters())

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data, batch_size=self.batch_size)


class GatherWeights(Callback):
    """The full (gathered) weights at the end of training, on every rank."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.weights = {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for n, p in pl_module.named_parameters()
        }


def fit(args: argparse.Namespace, sharded: bool, sam: dict[str, Any], callback: bool) -> Any:
    devices = args.devices if sharded else 1
    # one batch per epoch and step: every step sees the same global batch in both runs
    model = ShardedNet(8 * args.devices, 8 * args.devices // devices, None if callback else sam)
    gather = GatherWeights()
    callbacks: list[Callback] = [gather]
    if callback:
        callbacks.append(SharpnessAwareMinimization(**sam))
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=devices,
        strategy=(
            ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
            if sharded
            else "auto"
        ),
        max_steps=STEPS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return gather.weights, trainer.global_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    for name in args.variants:
        sam = VARIANTS[name]
        for callback in (False, True):
            single, _ = fit(args, sharded=False, sam=sam, callback=callback)
            sharded, rank = fit(args, sharded=True, sam=sam, callback=callback)
            if rank == 0:
                diff = max(float((single[n] - sharded[n]).abs().max()) for n in single)
                route = "callback" if callback else "optimizer"
                print(f"{name:6s} {route:9s} max |sharded - one device| = {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
