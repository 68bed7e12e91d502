"""torchmetrics metrics that are exact under DDP."""

from lightning_climate.metrics.relative_l2 import RelativeL2Error, relative_l2_error

__all__ = ["RelativeL2Error", "relative_l2_error"]
