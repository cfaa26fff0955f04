"""Which score judges a run, and which way it is better: one rule for ``best.pt``, early stopping, a sweep's ranking
and the value its jobs return, and the direction of a search.

A score's name says its direction: a loss, an error (RMSE, MAE) or a time is better lower, anything else (accuracy,
F1, R²) higher.
Scores are named as in ``metrics.json``: ``<split>_<score>`` (``val_accuracy``), ``best_<monitor>``,
``train_seconds``. The scores each kind of target reports are ``birnn.data.targets``'s.
"""

from __future__ import annotations

import math
from typing import Any, Literal

# what trainer.monitor accepts under each task (task.name): the validation scores "best" may mean; the first is the
# task's default
TASK_MONITORS = {
    "classification": ("val_accuracy", "val_f1", "val_loss"),
    "regression": ("val_rmse", "val_mae", "val_r2", "val_loss"),
}
MONITORS = tuple(dict.fromkeys(m for monitors in TASK_MONITORS.values() for m in monitors))
HEADLINES = ("test_accuracy", "test_rmse")  # the score every run of a task reports (the kind of target's ``score``)
HEADLINE = HEADLINES[0]  # classes'; a run without a validation split is judged by its headline
LOWER_IS_BETTER = ("loss", "seconds", "error", "rmse", "mae")  # words in a score's name that make lower better


def headline(metrics: dict[str, Any]) -> str:
    """The headline score ``metrics`` hold (``test_accuracy`` for classes, ``test_rmse`` for values), else
    ``HEADLINE``."""
    return next((h for h in HEADLINES if h in metrics), HEADLINE)


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of ``metric`` is better (accuracy, F1) or a lower one (a loss, a time)."""
    return not any(word in metric for word in LOWER_IS_BETTER)


def better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` improves on ``best``: NaN never improves, and any other value improves on
    nothing yet (None) or on a NaN best (a checkpoint of an earlier release may hold one)."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or (value > best if higher_is_better(metric) else value < best)


def best_first(metric: str, value: float) -> tuple[int, float]:
    """A sort key putting the best values of ``metric`` first and NaN last (after every number, in a stable
    order)."""
    if math.isnan(value):
        return (1, 0.0)
    return (0, -value if higher_is_better(metric) else value)


def direction(metric: str) -> Literal["maximize", "minimize"]:
    """The direction of a search (Optuna's) whose trials return ``metric``."""
    return "maximize" if higher_is_better(metric) else "minimize"


def judged_by(metrics: dict[str, Any], monitor: str) -> float:
    """The value a run is judged by (a sweep job's return value): its best ``monitor`` score, or without a
    validation split the monitor's test score (``test_r2`` for ``val_r2``: better the same way), else its headline
    test score (``headline``)."""
    if f"best_{monitor}" in metrics:
        return metrics[f"best_{monitor}"]
    return metrics.get(f"test_{monitor.removeprefix('val_')}", metrics[headline(metrics)])
