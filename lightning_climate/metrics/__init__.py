"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.constraint_violation import ConstraintViolation
from lightning_climate.metrics.relative_l2 import RelativeL2Error, relative_l2_error

__all__ = ["ConstraintViolation", "RelativeL2Error", "relative_l2_error"]
