"""Lightning callbacks that drop into an existing Trainer."""

__all__: list[str] = []
