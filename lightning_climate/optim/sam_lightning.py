"""How :class:`~lightning_climate.optim.SAM` meets Lightning without help from the module's code.

Two pieces, so that SAM returned from any ``configure_optimizers`` (a user's own, a task's injected
``OptimizerCallable``, LightningCLI's top-level ``optimizer:``) trains exactly as with the callback:

* :func:`lightning_module_on_stack` finds the LightningModule that builds or steps the optimizer:
  the nearest ``self`` on the call stack that is a LightningModule owning every parameter the
  optimizer updates (``configure_optimizers``, ``optimizer_step`` and a manual ``training_step``
  are all methods of it). SAM binds to it, so BatchNorm statistics and logging are handled.
* :func:`hand_closure_to_sam` teaches Lightning's ``MixedPrecision`` plugin with a GradScaler
  (``precision="16-mixed"``), which calls the closure itself and then ``optimizer.step()`` without
  it, to let SAM run both passes inside that one closure call, before the scaler unscales.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import MixedPrecision

__all__ = ["hand_closure_to_sam", "lightning_module_on_stack", "scaler_of"]

#: how many frames up the stack to look (Lightning's hook chain is about ten frames deep).
_MAX_FRAMES = 40


def lightning_module_on_stack(param_ids: set[int]) -> LightningModule | None:
    """The nearest LightningModule ``self`` on the call stack that owns all of ``param_ids``."""
    frame = inspect.currentframe()
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, LightningModule) and param_ids <= {
            id(p) for p in candidate.parameters()
        }:
            return candidate
        frame = frame.f_back
    return None


def scaler_of(module: LightningModule | None) -> Any:
    """The GradScaler of the module's trainer (``precision="16-mixed"``), or ``None``."""
    try:
        trainer = getattr(module, "trainer", None)
    except RuntimeError:  # a LightningModule that is not attached to a Trainer
        return None
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    return plugin.scaler if isinstance(plugin, MixedPrecision) else None


class _ClosureToSAM:
    """Mixin for ``MixedPrecision``: a SAM optimizer gets the closure (both passes in one call)."""

    def optimizer_step(
        self, optimizer: Any, model: Any, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if self.scaler is not None and hasattr(optimizer, "both_passes"):  # type: ignore[attr-defined]
            closure = partial(optimizer.both_passes, closure)
        return super().optimizer_step(optimizer, model, closure, **kwargs)  # type: ignore[misc]


def hand_closure_to_sam(module: LightningModule) -> None:
    """Under a GradScaler, make the module's precision plugin hand SAM the closure (idempotent).

    The plugin's class is extended in place (its scaler, state and any user subclass are kept):
    afterwards one closure call runs SAM's two passes and restores the weights, then the plugin
    unscales the second gradient, clips it, lets the scaler step (skipping on overflow) and updates
    the scale once. Optimizers other than SAM are not affected.
    """
    if scaler_of(module) is None:
        return
    plugin = module.trainer.strategy.precision_plugin
    if not isinstance(plugin, _ClosureToSAM):
        plugin.__class__ = type(f"SAM{type(plugin).__name__}", (_ClosureToSAM, type(plugin)), {})
