"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.catalyst import CatalystModel
from lightning_climate.models.cdsd import CDSD
from lightning_climate.models.cnn_lstm import CNNLSTM
from lightning_climate.models.dfno import DFNO
from lightning_climate.models.dimenet import DimeNetPPBackbone
from lightning_climate.models.embedding import PhysEmbedding
from lightning_climate.models.heads import EnergyHead, ForceHead
from lightning_climate.models.interpolation import Interpolation, fourier_resize
from lightning_climate.models.pooling import PoolingEnergyHead
from lightning_climate.models.relu_nets import ReLUCNN, ReLUMLP
from lightning_climate.models.schnet import SchNetBackbone
from lightning_climate.models.srcnn import SRCNN
from lightning_climate.models.super_emulator import SuperEmulator
from lightning_climate.models.timm_model import TimmModel
from lightning_climate.models.unet import UNet
from lightning_climate.models.vit import ViTEmulator
from lightning_climate.models.wide_resnet import WideResNet

__all__ = [
    "CDSD",
    "CNNLSTM",
    "DFNO",
    "SRCNN",
    "CatalystModel",
    "DimeNetPPBackbone",
    "EnergyHead",
    "ForceHead",
    "Interpolation",
    "PhysEmbedding",
    "PoolingEnergyHead",
    "ReLUCNN",
    "ReLUMLP",
    "SchNetBackbone",
    "SuperEmulator",
    "TimmModel",
    "UNet",
    "ViTEmulator",
    "WideResNet",
    "fourier_resize",
]
