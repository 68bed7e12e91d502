"""Lightning callbacks that drop into an existing Trainer."""

from lightning_climate.callbacks.constraint_monitor import ConstraintMonitor
from lightning_climate.callbacks.difficulty import DifficultyScores
from lightning_climate.callbacks.difficulty_ids import IndexedDataset
from lightning_climate.callbacks.downscaling_report import DownscalingReport
from lightning_climate.callbacks.exact_resume import ExactResume
from lightning_climate.callbacks.functional_dimension import FunctionalDimension
from lightning_climate.callbacks.sam import SharpnessAwareMinimization

__all__ = [
    "ConstraintMonitor",
    "DifficultyScores",
    "DownscalingReport",
    "ExactResume",
    "FunctionalDimension",
    "IndexedDataset",
    "SharpnessAwareMinimization",
]
