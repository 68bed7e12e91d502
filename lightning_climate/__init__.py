"""lightning-climate: PyTorch Lightning plugins for climate and materials machine learning."""

__version__ = "0.1.0"

__all__ = ["__version__"]
