"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.dfno import DFNO
from lightning_climate.models.interpolation import Interpolation, fourier_resize
from lightning_climate.models.relu_nets import ReLUCNN, ReLUMLP
from lightning_climate.models.srcnn import SRCNN
from lightning_climate.models.wide_resnet import WideResNet

__all__ = [
    "DFNO",
    "SRCNN",
    "Interpolation",
    "ReLUCNN",
    "ReLUMLP",
    "WideResNet",
    "fourier_resize",
]
