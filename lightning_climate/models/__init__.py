"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.wide_resnet import WideResNet

__all__ = ["WideResNet"]
