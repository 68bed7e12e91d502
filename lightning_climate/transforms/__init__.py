"""PyG BaseTransforms for graph construction and rewiring."""

__all__: list[str] = []
