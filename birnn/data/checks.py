"""Checks the loaders share on the arrays they read: IDs and labels in range, lengths that fit, per-step
labels exactly where the lengths say (``IGNORE`` elsewhere), and float targets that can be scored."""

from __future__ import annotations

import numpy as np

from birnn.data.pipeline import IGNORE


def first_outside(values: np.ndarray, high: int) -> int | None:
    """A value of ``values`` outside ``0..high-1`` (the largest if any is too large, else the smallest), or None."""
    if not values.size or (values.min() >= 0 and values.max() < high):
        return None
    return int(values.max() if values.max() >= high else values.min())


def lengths_fit(lengths: np.ndarray, n: int, steps: int) -> bool:
    """``lengths`` are ``n`` integers in ``1..steps``."""
    return (
        lengths.dtype.kind in "iu" and lengths.shape == (n,) and (not n or 1 <= lengths.min() <= lengths.max() <= steps)
    )


def misplaced(y: np.ndarray, lengths: np.ndarray | None) -> str | None:
    """What is wrong with per-step labels ``y`` (n, steps) given the valid steps: a step without a label inside a
    length, or a label beyond it (where ``IGNORE`` belongs); None when nothing is."""
    valid = np.arange(y.shape[1]) < (y.shape[1] if lengths is None else lengths[:, None])
    wrong = np.argwhere((y == IGNORE) == valid)
    if not len(wrong):
        return None
    i, t = (int(v) for v in wrong[0])
    if valid[i, t]:
        return f"sample {i} has no label at step {t}"
    return f"sample {i} has label {int(y[i, t])} at step {t}, beyond its length {int(lengths[i])} ({IGNORE} there)"


def unscorable(y: np.ndarray) -> str | None:
    """What makes float targets ``y`` unusable: an infinite value anywhere, or a NaN in targets one per sample
    ``(n,)`` (in a 2-D ``y`` a NaN is a step that is not scored); None when nothing does."""
    bad = np.argwhere(np.isinf(y) | (np.isnan(y) if y.ndim == 1 else False))
    if not len(bad):
        return None
    where = f"sample {int(bad[0][0])}" + (f" step {int(bad[0][1])}" if y.ndim == 2 else "")
    return f"{where} has target {float(y[tuple(bad[0])])}: targets must be finite numbers" + (
        "" if y.ndim == 2 else " (NaN marks a step that is not scored, in targets per step only)"
    )
