"""Model architectures (plain torch.nn.Modules)."""

__all__: list[str] = []
