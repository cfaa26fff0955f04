"""Edges of task=regression a hostile user found: a constant output's R², NaN scores as "best" and in a sweep's
ranking, overflowing targets, re-tasking a checkpoint, wording under values, and a stopped export."""

from __future__ import annotations

import math

import pytest
import torch

from birnn.data.targets import value_scores


def test_a_constant_output_scores_r2_as_scikit_learn_does():
    from sklearn.metrics import r2_score

    y = torch.tensor([[1.0, 5], [2, 5], [3, 5]])
    scores = value_scores(y, y + 0.1, ["a", "b"], False)
    assert scores["r2"] == pytest.approx(r2_score(y.numpy(), (y + 0.1).numpy()), rel=1e-6)  # 0.4925
    assert scores["r2_b"] == 0.0  # constant, not predicted exactly
    assert value_scores(y, y, ["a", "b"], False)["r2_b"] == 1.0  # constant, predicted exactly
    per_step = torch.tensor([[4.0, 4, math.nan], [4, 4, 4]])
    assert value_scores(per_step, per_step + 1, ["v"], True)["r2"] == 0.0
    assert math.isnan(value_scores(torch.full((2, 3), math.nan), torch.zeros(2, 3), ["v"], True)["r2"])
