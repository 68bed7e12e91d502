"""When :class:`~lightning_climate.callbacks.DifficultyScores` scores, and which scores each time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ScoreSchedule"]

#: scores that cost more than one forward pass and can be restricted to a few epochs.
COSTLY_SCORES = ("grand", "vog", "prediction_depth")


@dataclass(frozen=True)
class ScoreSchedule:
    """Scoring points: chosen epochs (or every n-th), chosen global steps, and per-score epochs.

    Args:
        epochs: epochs (0-based) after whose training the scores are computed; ``-1`` scores the
            model before training. ``None`` scores every ``every_n_epochs``-th epoch.
        every_n_epochs: scoring period when ``epochs`` is ``None``; 0 disables epoch scoring.
        steps: global steps after which to score as well (recorded with the current epoch).
        score_epochs: per-score epochs: the score is computed at these epochs only (and not at
            ``steps``); an epoch listed here is scored even if ``epochs`` skips it.
    """

    epochs: tuple[int, ...] | None = None
    every_n_epochs: int = 1
    steps: tuple[int, ...] = ()
    score_epochs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        epochs: Sequence[int] | None,
        every_n_epochs: int,
        steps: Sequence[int] | None,
        score_epochs: Mapping[str, Sequence[int]] | None,
    ) -> ScoreSchedule:
        """Validate the arguments (errors name the argument) and sort them."""
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise TypeError(f"every_n_epochs must be an int, got {every_n_epochs!r}.")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}.")
        _check_ints("epochs", epochs or (), minimum=-1, hint=" (-1 = before training)")
        _check_ints("steps", steps or (), minimum=1)
        for name, values in (score_epochs or {}).items():
            _check_ints(f"score_epochs[{name!r}]", values, minimum=-1)
        return cls(
            epochs=None if epochs is None else tuple(sorted(set(epochs))),
            every_n_epochs=every_n_epochs,
            steps=tuple(sorted(set(steps or ()))),
            score_epochs={k: tuple(sorted(set(v))) for k, v in (score_epochs or {}).items()},
        )

    def epoch_scheduled(self, epoch: int) -> bool:
        """Whether ``epochs``/``every_n_epochs`` choose this epoch."""
        if self.epochs is not None:
            return epoch in self.epochs
        return self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0

    def due(self, epoch: int) -> bool:
        """Whether the end of this epoch is a scoring point."""
        return self.epoch_scheduled(epoch) or any(epoch in e for e in self.score_epochs.values())

    def active(self, name: str, epoch: int, by_step: bool) -> bool:
        """Whether the score ``name`` is computed at this scoring point."""
        if name in self.score_epochs:
            return not by_step and epoch in self.score_epochs[name]
        return by_step or self.epoch_scheduled(epoch)

    def as_dict(self) -> dict[str, object]:
        """The schedule as plain JSON-able values (for the store's attributes)."""
        return {
            "epochs": None if self.epochs is None else list(self.epochs),
            "every_n_epochs": self.every_n_epochs,
            "steps": list(self.steps),
            "score_epochs": {k: list(v) for k, v in self.score_epochs.items()},
        }


def _check_ints(name: str, values: Sequence[int], minimum: int, hint: str = "") -> None:
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a list of ints, got the string {values!r}.")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < minimum]
    if bad:
        raise ValueError(f"{name} must hold ints >= {minimum}{hint}, got {list(values)}.")
