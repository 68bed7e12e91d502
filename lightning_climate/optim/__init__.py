"""Optimizer wrappers usable from LightningCLI through OptimizerCallable."""

from lightning_climate.optim.norm import NORM_TYPES, norm_parameters
from lightning_climate.optim.sam import SAM, in_perturbed_pass

__all__ = ["NORM_TYPES", "SAM", "in_perturbed_pass", "norm_parameters"]
