"""Callback that turns any LightningModule's optimizer into SAM, ASAM or SAM-ON, unchanged code."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_climate.optim.norm import NormFilter
from lightning_climate.optim.sam import SAM, check_settings

__all__ = ["SharpnessAwareMinimization"]

#: strategies whose optimizer sees flattened local shards (no global gradient norm per tensor);
#: ModelParallelStrategy (FSDP2, DTensor parameters) is supported.
_REFUSED_STRATEGIES = (DeepSpeedStrategy, FSDPStrategy)


class SharpnessAwareMinimization(Callback):
    """Train with SAM (Foret et al.), ASAM (Kwon et al.) or SAM-ON (Mueller et al.).

    In ``on_fit_start`` the optimizer returned by the module's own ``configure_optimizers`` is
    wrapped in :class:`~lightning_climate.optim.SAM` (its state, parameter groups and LR schedulers
    are kept), through the public ``trainer.strategy.optimizers``. Each optimizer step then runs
    Lightning's closure twice: at ``w`` and at ``w + e``; the update uses the second gradient.

    Guarantees: the logged training loss comes from the first pass (``self.log`` is silenced in
    the second; :func:`~lightning_climate.optim.in_perturbed_pass` tells ``training_step`` which
    pass it is in); BatchNorm running statistics are not changed by the second pass; gradient
    clipping set on the Trainer is applied to the second gradient before the update; under DDP
    both passes use all-reduced gradients (``perturbation="global"``) or the first pass stays on
    each rank (``"local"``); under ``precision="16-mixed"`` both passes are scaled, an overflow
    in either skips the step and the scale is updated once; checkpoints hold the base
    optimizer's state and the step count.

    Refused, each with an error naming the fix: ``accumulate_grad_batches > 1``, manual
    optimization (use :class:`SAM` directly), an optimizer that is already SAM, and the FSDP (v1)
    and DeepSpeed strategies (their optimizer sees flattened local shards). Sharded FSDP2
    parameters (``ModelParallelStrategy`` with ``fully_shard``) are supported.

    Caveat: the ``training_step`` output handed to ``on_train_batch_end`` is that of the second
    pass (Lightning keeps the closure's last result); the per-step loss is the first pass's.

    Args:
        rho: perturbation radius (SAM ~0.05; ASAM and SAM-ON need 5-10x larger).
        adaptive: ASAM's element-wise scaling ``|w| + eta``.
        norm_only: SAM-ON, perturb only the parameters of normalisation layers.
        eta: ASAM's offset.
        norm_filter: ``(module name, module) -> bool`` replacing the default choice of
            normalisation modules (all BatchNorm/GroupNorm/LayerNorm/InstanceNorm/RMSNorm and timm
            norm layers).
        perturbation: ``"global"`` (every rank uses the all-reduced first gradient) or
            ``"local"`` (per-rank perturbation, one all-reduce per step), see :class:`SAM`.
        every_n_steps: a SAM step every ``n``-th step, plain steps in between.
    """

    def __init__(
        self,
        rho: float = 0.05,
        adaptive: bool = False,
        norm_only: bool = False,
        eta: float = 0.01,
        norm_filter: NormFilter | None = None,
        perturbation: Literal["global", "local"] = "global",
        every_n_steps: int = 1,
    ) -> None:
        check_settings(
            "SharpnessAwareMinimization",
            rho=rho,
            eta=eta,
            perturbation=perturbation,
            every_n_steps=every_n_steps,
        )
        if rho == 0:
            rank_zero_warn("SharpnessAwareMinimization(rho=0) doubles the cost of plain training.")
        self.rho = rho
        self.adaptive = adaptive
        self.norm_only = norm_only
        self.eta = eta
        self.norm_filter = norm_filter
        self.perturbation = perturbation
        self.every_n_steps = every_n_steps
        self.steps = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse accumulation and strategies that SAM cannot run under."""
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _REFUSED_STRATEGIES):
            raise MisconfigurationException(
                f"SharpnessAwareMinimization does not support {type(trainer.strategy).__name__}: "
                "its optimizer sees flattened local shards, so the perturbation's gradient norm "
                "would not be global. Use strategy='ddp', or ModelParallelStrategy with "
                "torch.distributed.fsdp.fully_shard in configure_model (FSDP2)."
            )
        if trainer.accumulate_grad_batches > 1:
            raise MisconfigurationException(
                "SharpnessAwareMinimization cannot be combined with accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}: accumulated gradients would mix unperturbed "
                "and perturbed passes. Use accumulate_grad_batches=1 and a larger batch size."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Wrap the module's optimizer in SAM and bind it to the module."""
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "SharpnessAwareMinimization needs automatic optimization. With manual "
                "optimization build `lightning_climate.optim.SAM(..., base_optimizer=...)` in "
                "configure_optimizers, call `optimizer.bind(self)`, and call "
                "`self.optimizers().step(closure)` with a closure that runs zero_grad, the forward "
                "and `self.manual_backward(loss)`; then remove this callback."
            )
        # automatic optimization has exactly one optimizer (Lightning refuses more)
        (optimizer,) = trainer.strategy.optimizers
        if isinstance(optimizer, SAM):
            raise MisconfigurationException(
                "The module's optimizer is already lightning_climate.optim.SAM: remove the "
                "SharpnessAwareMinimization callback, or return the base optimizer."
            )
        sam = SAM.wrap(
            optimizer,
            rho=self.rho,
            adaptive=self.adaptive,
            norm_only=self.norm_only,
            eta=self.eta,
            norm_filter=self.norm_filter,
            perturbation=self.perturbation,
            every_n_steps=self.every_n_steps,
        )
        trainer.strategy.optimizers = [sam.bind(pl_module)]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Apply this callback's settings to groups restored from a checkpoint."""
        for group in trainer.strategy.optimizers[0].param_groups:
            group.update(rho=self.rho, adaptive=self.adaptive, eta=self.eta)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count optimizer steps (one per batch: accumulation is refused)."""
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """Settings and the number of steps taken (the optimizer state is in the checkpoint)."""
        return {
            "rho": self.rho,
            "adaptive": self.adaptive,
            "norm_only": self.norm_only,
            "eta": self.eta,
            "perturbation": self.perturbation,
            "every_n_steps": self.every_n_steps,
            "steps": self.steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count; warn when the checkpoint was made with other settings."""
        self.steps = state_dict.get("steps", 0)
        keys = ("rho", "adaptive", "norm_only", "eta", "perturbation", "every_n_steps")
        defaults = {"perturbation": "global", "every_n_steps": 1}
        saved = {k: state_dict.get(k, defaults.get(k)) for k in keys}
        current = {k: getattr(self, k) for k in saved}
        if saved != current:
            rank_zero_warn(
                f"SharpnessAwareMinimization resumes with {current} but the checkpoint was "
                f"trained with {saved}; the new settings apply from now on."
            )
