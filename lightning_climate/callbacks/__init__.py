"""Lightning callbacks that drop into an existing Trainer."""

from lightning_climate.callbacks.difficulty import DifficultyScores

__all__: list[str] = ["DifficultyScores"]
