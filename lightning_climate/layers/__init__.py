"""Neural network layers, such as physical constraint layers."""

from lightning_climate.layers.constrained import ConstrainedModel
from lightning_climate.layers.constraints import (
    AdditiveConstraint,
    MultiplicativeConstraint,
    ScaledAdditiveConstraint,
    SoftmaxConstraint,
    build_constraint,
)
from lightning_climate.layers.normalization import Normalizer
from lightning_climate.layers.ordering import MinMeanMaxConstraint, OrderingConstraint

__all__ = [
    "AdditiveConstraint",
    "ConstrainedModel",
    "MinMeanMaxConstraint",
    "MultiplicativeConstraint",
    "Normalizer",
    "OrderingConstraint",
    "ScaledAdditiveConstraint",
    "SoftmaxConstraint",
    "build_constraint",
]
