"""Which score judges a run, and which way it is better: one rule for ``best.pt``, early stopping, a sweep's ranking
and the value its jobs return, and the direction of a search.

A score's name says its direction: a loss, an error or a time is better lower, anything else (accuracy, F1) higher.
Scores are named as in ``metrics.json``: ``<split>_<score>`` (``val_accuracy``), ``best_<monitor>``,
``train_seconds``. The scores each kind of target reports are ``birnn.data.targets``'s.
"""

from __future__ import annotations

from typing import Any, Literal

MONITORS = ("val_accuracy", "val_f1")  # what trainer.monitor accepts: the validation scores "best" may mean
HEADLINE = "test_accuracy"  # the score every run reports; a run without a validation split is judged by it
LOWER_IS_BETTER = ("loss", "seconds")  # words in a score's name that make lower better


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of ``metric`` is better (accuracy, F1) or a lower one (a loss, a time)."""
    return not any(word in metric for word in LOWER_IS_BETTER)


def better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` improves on ``best`` (None: nothing to improve on yet; NaN never improves)."""
    return best is None or (value > best if higher_is_better(metric) else value < best)


def best_first(metric: str, value: float) -> float:
    """A sort key putting the best values of ``metric`` first."""
    return -value if higher_is_better(metric) else value


def direction(metric: str) -> Literal["maximize", "minimize"]:
    """The direction of a search (Optuna's) whose trials return ``metric``."""
    return "maximize" if higher_is_better(metric) else "minimize"


def judged_by(metrics: dict[str, Any], monitor: str) -> float:
    """The value a run is judged by (a sweep job's return value): its best ``monitor`` score, or without a
    validation split its ``HEADLINE`` test score."""
    return metrics.get(f"best_{monitor}", metrics[HEADLINE])
