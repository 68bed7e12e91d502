"""Optimizer wrappers usable from LightningCLI through OptimizerCallable."""

__all__: list[str] = []
