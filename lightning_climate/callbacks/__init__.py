"""Lightning callbacks that drop into an existing Trainer."""

from lightning_climate.callbacks.difficulty import DifficultyScores
from lightning_climate.callbacks.functional_dimension import FunctionalDimension

__all__: list[str] = ["DifficultyScores", "FunctionalDimension"]
