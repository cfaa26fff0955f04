"""One evaluation pass's result, as the trackers receive it. What is scored, and how, is the kind of target's
(``birnn.data.targets``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from birnn.data.targets import Target


@dataclass
class EvalResult:
    """One evaluation pass over a split; ``scores``: every score of it by name (``val_loss``, ``val_rmse``...), as
    the run records them (None: loss and accuracy alone); ``target``: the kind of target that scored it (None:
    classes per sequence), which chooses what its pictures show."""

    loss: float
    accuracy: float
    predictions: Tensor  # what the kind predicts (a class per sample; per step: IGNORE beyond a length; values)
    scores: dict[str, float] | None = None
    target: Target | None = None

    def scalars(self, split: str) -> dict[str, float]:
        """The pass's scores as tracker scalars, ``split/name``."""
        if self.scores is None:
            return {f"{split}/loss": self.loss, f"{split}/accuracy": self.accuracy}
        return {k.replace("_", "/", 1): v for k, v in self.scores.items()}
