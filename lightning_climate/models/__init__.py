"""Model architectures (plain torch.nn.Modules)."""

from lightning_climate.models.relu_nets import ReLUCNN, ReLUMLP

__all__: list[str] = ["ReLUCNN", "ReLUMLP"]
