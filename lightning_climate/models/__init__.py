"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.cdsd import CDSD

__all__ = ["CDSD"]
