"""The trivial baseline reported beside a test score: does the model beat always answering the commonest label?"""

from __future__ import annotations

import torch

from birnn.data.pipeline import IGNORE


def majority(train_y: torch.Tensor, test_y: torch.Tensor, classes: list[str]) -> dict:
    """``test_baseline_accuracy``: the test accuracy of always predicting the training split's most frequent class
    (one label per sample) or tag (per step: counted over all tokens, padding left out), and ``test_baseline``
    saying so; empty for other targets (float labels) or an empty split."""
    train, test = train_y[train_y != IGNORE], test_y[test_y != IGNORE]
    if train.is_floating_point() or not train.numel() or not test.numel():
        return {}
    top = int(torch.bincount(train).argmax())
    what = "tag overall" if train_y.ndim == 2 else "class"
    return {
        "test_baseline_accuracy": (test == top).float().mean().item(),
        "test_baseline": f"always {classes[top]!r}, the training split's most frequent {what}",
    }
