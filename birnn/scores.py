"""Per-class scores of a classifier's predictions: the confusion matrix, precision and recall."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(y: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes) on the CPU: row = true class, column = predicted class."""
    flat = y.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def per_class(matrix: Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall and support per class; a score with nothing to divide by is None."""
    correct, predicted, support = matrix.diag().tolist(), matrix.sum(0).tolist(), matrix.sum(1).tolist()
    return [{"class": name, "precision": correct[i] / predicted[i] if predicted[i] else None,
             "recall": correct[i] / support[i] if support[i] else None, "support": support[i]}
            for i, name in enumerate(classes)]
