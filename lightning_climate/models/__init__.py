"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.cdsd import CDSD
from lightning_climate.models.cnn_lstm import CNNLSTM
from lightning_climate.models.dfno import DFNO
from lightning_climate.models.interpolation import Interpolation, fourier_resize
from lightning_climate.models.relu_nets import ReLUCNN, ReLUMLP
from lightning_climate.models.srcnn import SRCNN
from lightning_climate.models.super_emulator import SuperEmulator
from lightning_climate.models.unet import UNet
from lightning_climate.models.vit import ViTEmulator
from lightning_climate.models.wide_resnet import WideResNet

__all__ = [
    "CDSD",
    "CNNLSTM",
    "DFNO",
    "SRCNN",
    "Interpolation",
    "ReLUCNN",
    "ReLUMLP",
    "SuperEmulator",
    "UNet",
    "ViTEmulator",
    "WideResNet",
    "fourier_resize",
]
