"""Scores of a classifier's predictions: one evaluation pass's result; per class (scikit-learn's) the confusion
matrix, precision and recall; macro-F1; span scores of BIO/BIOES tags (seqeval)."""

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
    predictions: Tensor  # predicted class per sample (per step: IGNORE beyond a length), on the device


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


def macro_f1(y: Tensor, predictions: Tensor) -> float:
    """Macro-averaged F1 over the classes present in ``y`` or ``predictions`` (valid labels only: ``y >= 0``)."""
    valid = y >= 0
    return float(metrics.f1_score(y[valid].cpu(), predictions[valid].cpu(), average="macro", zero_division=0))


def span_scheme(classes: list[str]) -> str | None:
    """``BIOES`` or ``IOB2`` when every tag name is ``O`` or ``B-``/``I-`` (/``E-``/``S-``) plus a type, else None."""
    prefixes = {c.split("-", 1)[0] for c in classes if c != "O"}
    if not prefixes or any("-" not in c for c in classes if c != "O") or "B" not in prefixes:
        return None
    if prefixes <= {"B", "I"}:
        return "IOB2"
    return "BIOES" if prefixes <= {"B", "I", "E", "S"} else None


def tag_scores(y: Tensor, predictions: Tensor, classes: list[str]) -> dict[str, float]:
    """Per-token macro-F1 and, for BIO/BIOES tags, span precision, recall and F1 (seqeval, strict matching)."""
    scores = {"f1": macro_f1(y, predictions)}
    scheme = span_scheme(classes)
    if scheme is None:
        return scores
    from seqeval import metrics as spans
    from seqeval.scheme import IOB2, IOBES

    true, pred = [], []
    for row_y, row_p in zip(y.cpu().tolist(), predictions.cpu().tolist()):
        true.append([classes[t] for t in row_y if t >= 0])
        pred.append([classes[p] if p >= 0 else "O" for t, p in zip(row_y, row_p) if t >= 0])
    kwargs = {"mode": "strict", "scheme": IOBES if scheme == "BIOES" else IOB2, "zero_division": 0}
    return scores | {
        "span_precision": float(spans.precision_score(true, pred, **kwargs)),
        "span_recall": float(spans.recall_score(true, pred, **kwargs)),
        "span_f1": float(spans.f1_score(true, pred, **kwargs)),
    }
