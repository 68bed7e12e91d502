"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.constraint_violation import ConstraintViolation

__all__ = ["ConstraintViolation"]
