"""Lightning callbacks that drop into an existing Trainer."""

from lightning_climate.callbacks.sam import SharpnessAwareMinimization

__all__ = ["SharpnessAwareMinimization"]
