"""torchmetrics metrics that are exact under DDP."""

__all__: list[str] = []
