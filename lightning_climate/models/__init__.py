"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.dfno import DFNO
from lightning_climate.models.interpolation import Interpolation, fourier_resize
from lightning_climate.models.srcnn import SRCNN

__all__ = ["DFNO", "SRCNN", "Interpolation", "fourier_resize"]
