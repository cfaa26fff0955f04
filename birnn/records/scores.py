"""One evaluation pass's result, as the trackers receive it. What is scored, and how, is the kind of target's
(``birnn.data.targets``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EvalResult:
    """One evaluation pass over a split."""

    loss: float
    accuracy: float
    predictions: Tensor  # predicted class per sample (per step: IGNORE beyond a length), on the device
