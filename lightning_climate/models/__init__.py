"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.cdsd import CDSD
from lightning_climate.models.cnn_lstm import CNNLSTM
from lightning_climate.models.super_emulator import SuperEmulator
from lightning_climate.models.unet import UNet
from lightning_climate.models.vit import ViTEmulator

__all__ = ["CDSD", "CNNLSTM", "SuperEmulator", "UNet", "ViTEmulator"]
