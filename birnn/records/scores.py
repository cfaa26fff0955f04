"""Scores of a classifier's predictions: one evaluation pass's result, and per class (scikit-learn's) the
confusion matrix, precision and recall."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from sklearn import metrics
from torch import Tensor


@dataclass
class EvalResult:
    """One evaluation pass over a split."""

    loss: float
    accuracy: float
    predictions: Tensor  # predicted class per sample, on the device


def confusion_matrix(y: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes) on the CPU: row = true class, column = predicted class."""
    return torch.from_numpy(metrics.confusion_matrix(y.cpu(), predictions.cpu(), labels=range(num_classes)))


def per_class(y: Tensor, predictions: Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall and support per class; a score with nothing to divide by is None."""
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y.cpu(), predictions.cpu(), labels=range(len(classes)), zero_division=math.nan
    )
    return [
        {
            "class": name,
            "precision": None if math.isnan(p) else float(p),
            "recall": None if math.isnan(r) else float(r),
            "support": int(s),
        }
        for name, p, r, s in zip(classes, precision, recall, support)
    ]
