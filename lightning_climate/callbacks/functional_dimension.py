"""Log the functional dimension of a ReLU network while it trains."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_climate.analysis.functional_dimension import (
    check_relu_network,
    functional_dimension,
)

__all__ = ["FunctionalDimension"]


class FunctionalDimension(Callback):
    """Log the batch functional dimension of an MLP or small CNN after chosen epochs.

    At each logging point the Jacobian of the network's outputs w.r.t. its parameters is taken
    at ``num_points`` Gaussian points ``N(0, I)`` (fixed seed, identical on every rank) and its
    rank is logged with the symmetry bound, the gap, and the dead and always-active ReLU units
    (see :mod:`lightning_climate.analysis.functional_dimension`). Architectures outside
    ``nn.Sequential`` stacks of Linear/Conv/ReLU/Flatten/pooling are refused at ``setup``.

    Logged keys: ``fdim/rank``, ``fdim/bound``, ``fdim/gap``, ``fdim/dead``, ``fdim/always_active``.

    Args:
        submodule: dotted name of the ``nn.Sequential`` network inside the LightningModule;
            ``None`` takes the module itself if it is one, else its only ``nn.Sequential`` child.
        num_points: Gaussian points; ``None`` uses ``ceil(10 * D / outputs)`` (10 Jacobian rows
            per parameter).
        every_n_epochs: logging period in epochs.
        input_shape: shape of one input without the batch axis; ``None`` reads it from the first
            training batch (``input_key`` of a dict batch, or the first element of a sequence).
        input_key: batch key of the inputs when batches are dicts.
        method: ``"svd"`` or ``"gram"`` rank computation (see the analysis module's tolerance).
        seed: seed of the Gaussian points.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        submodule: str | None = None,
        num_points: int | None = None,
        every_n_epochs: int = 1,
        input_shape: Sequence[int] | None = None,
        input_key: str = "image",
        method: Literal["svd", "gram"] = "svd",
        seed: int = 0,
    ) -> None:
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be a positive integer or None, got {num_points}.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if method not in ("svd", "gram"):
            raise ValueError(f"method must be 'svd' or 'gram', got {method!r}.")
        self.submodule = submodule
        self.num_points = num_points
        self.every_n_epochs = every_n_epochs
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.input_key = input_key
        self.method = method
        self.seed = seed
        self.history: list[dict[str, float]] = []
        self._warned = False

    def network(self, pl_module: LightningModule) -> nn.Module:
        """The ``nn.Sequential`` network whose functional dimension is measured."""
        if self.submodule is not None:
            modules = dict(pl_module.named_modules())
            if self.submodule not in modules:
                raise ValueError(
                    f"submodule '{self.submodule}' is not in {type(pl_module).__name__}; choose a "
                    f"name from pl_module.named_modules(), e.g. {[n for n in modules if n][:10]}."
                )
            return modules[self.submodule]
        if isinstance(pl_module, nn.Sequential):
            return pl_module
        children = [(n, m) for n, m in pl_module.named_children() if isinstance(m, nn.Sequential)]
        if len(children) != 1:
            raise ValueError(
                f"{type(pl_module).__name__} has {len(children)} nn.Sequential children; set "
                "`submodule` to the dotted name of the ReLU network to measure."
            )
        return children[0][1]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse sharded strategies and architectures the analysis cannot handle."""
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise TypeError(
                "FunctionalDimension needs the full parameters on every rank; use DDP or a single "
                f"device instead of {type(trainer.strategy).__name__}."
            )
        check_relu_network(self.network(pl_module))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Read the input shape from the first batch when it was not given."""
        if self.input_shape is not None:
            return
        x = batch[self.input_key] if isinstance(batch, Mapping) else batch
        if isinstance(x, Sequence) and not isinstance(x, Tensor):
            x = x[0]
        if not isinstance(x, Tensor):
            raise TypeError(
                "FunctionalDimension could not find the input tensor in the batch; pass "
                "`input_shape` (one input without the batch axis) or `input_key`."
            )
        self.input_shape = tuple(x.shape[1:])

    def points(self, network: nn.Module) -> Tensor:
        """The Gaussian probe points (same on every rank and every call)."""
        assert self.input_shape is not None
        num = self.num_points
        if num is None:
            params = sum(p.numel() for p in network.parameters())
            with torch.no_grad():
                outputs = network(
                    torch.zeros(1, *self.input_shape, device=_device(network))
                ).numel()
            num = math.ceil(10 * params / outputs)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(num, *self.input_shape, generator=gen, dtype=torch.float64)

    def measure(self, pl_module: LightningModule) -> dict[str, float]:
        """Compute the logged values for the current parameters."""
        network = self.network(pl_module)
        points = self.points(network).to(_device(network))
        result = functional_dimension(network, points, method=self.method)
        if result.num_rows < result.bound and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"FunctionalDimension: {len(points)} points give only {result.num_rows} Jacobian rows, fewer "
                f"than the bound {result.bound}, so the rank is capped by the number of points; "
                "increase `num_points` (or leave it None for 10 rows per parameter)."
            )
        return {
            "fdim/rank": float(result.rank),
            "fdim/bound": float(result.bound),
            "fdim/gap": float(result.gap),
            "fdim/dead": float(result.dead),
            "fdim/always_active": float(result.always_active),
        }

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Measure and log every ``every_n_epochs`` epochs."""
        if (trainer.current_epoch + 1) % self.every_n_epochs or self.input_shape is None:
            return
        values = self.measure(pl_module)
        self.history.append({"epoch": float(trainer.current_epoch), **values})
        for name, value in values.items():
            # identical on every rank (synced weights, same points): the mean sync is exact
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        """Measurements so far and the input shape."""
        return {"history": [dict(h) for h in self.history], "input_shape": self.input_shape}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.history = [dict(h) for h in state_dict.get("history", [])]
        shape = state_dict.get("input_shape")
        if shape is not None:
            self.input_shape = tuple(shape)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
