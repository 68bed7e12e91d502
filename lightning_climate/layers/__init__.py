"""Neural network layers, such as physical constraint layers."""

__all__: list[str] = []
