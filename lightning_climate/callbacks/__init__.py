"""Lightning callbacks that drop into an existing Trainer."""

from lightning_climate.callbacks.constraint_monitor import ConstraintMonitor

__all__ = ["ConstraintMonitor"]
