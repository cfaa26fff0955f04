"""Pictures of an evaluation pass, drawn with matplotlib's Agg canvas (no GUI backend, no pyplot state).

They are drawn after every test pass, so layouts are computed by hand (no constrained layout) to stay cheap.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

CHAR_INCH = 0.06  # width of one tick-label character at fontsize 7
MAX_LABEL = 40  # characters of a class name shown in a picture (figure sizes follow the names)


def label(name: str) -> str:
    """``name`` cut to ``MAX_LABEL`` characters, an ellipsis marking the cut: class names come from the data, and a
    12,000-character one would size a figure of thousands of inches."""
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "\u2026"


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    """The confusion matrix as a heat map with its non-zero counts; rows are true classes, columns predicted."""
    classes = [label(c) for c in classes]
    n = len(classes)
    side = 0.4 * n  # inches of the matrix itself
    margin = 0.45 + CHAR_INCH * max(len(c) for c in classes)  # room for the tick labels and the axis label
    width = height = side + margin + 0.15
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((margin / width, margin / height, side / width, side / height))
    ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2
    for i, j in zip(*matrix.nonzero()):
        ax.text(
            j,
            i,
            str(matrix[i, j]),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if matrix[i, j] > threshold else "black",
        )
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def misclassified_figure(
    images: np.ndarray, true: list[str], predicted: list[str], total: int, columns: int = 8, title: str | None = None
) -> Figure:
    """Images (n, h, w) in [0, 1] in one mosaic, each under a caption: its true and its predicted class (or values;
    ``title``: what they are, default ``n of total misclassified``).

    One Axes for the whole grid keeps drawing cheap.
    """
    true, predicted = [label(c) for c in true], [label(c) for c in predicted]
    n, h, w = images.shape
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    pad, band = max(1, w // 8), max(3, round(0.35 * h))  # gap between tiles; caption band above each tile
    cell_h, cell_w = band + h + pad, w + pad
    mosaic = np.ones((rows * cell_h, cols * cell_w))
    title = 0.25  # inches
    width = 1.2 * cols
    height = width * mosaic.shape[0] / mosaic.shape[1] + title
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 - title / height))
    for k in range(n):
        top, left = (k // cols) * cell_h + band, (k % cols) * cell_w
        mosaic[top : top + h, left : left + w] = images[k]
        ax.text(
            left + w / 2,
            top - 0.5,
            f"{true[k]}\n\u2192 {predicted[k]}",
            ha="center",
            va="bottom",
            fontsize=6.5,
            linespacing=1.1,
        )
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    title = title or f"true \u2192 predicted: {n} of {total} misclassified"
    fig.suptitle(title, fontsize=8, y=1 - 0.05 / height, va="top")
    return fig


def misclassified_series_figure(
    series: list[np.ndarray], true: list[str], predicted: list[str], total: int, columns: int = 3
) -> Figure:
    """Series (steps, channels), each as line plots of its channels, titled with its true and predicted class."""
    captions = [f"true {label(t)} \u2192 predicted {label(p)}" for t, p in zip(true, predicted)]
    title = f"{len(series)} of {total} misclassified (one line per channel)"
    return series_figure(series, captions, title, columns)


def worst_series_figure(
    series: list[np.ndarray], true: list[str], predicted: list[str], total: int, columns: int = 3
) -> Figure:
    """The worst-predicted series (steps, channels) as line plots of their channels, each titled with its true and
    predicted values (as text: one value, several, or a summary of values per step)."""
    captions = [f"true {label(t)} \u2192 predicted {label(p)}" for t, p in zip(true, predicted)]
    title = f"the {len(series)} worst predicted of {total} (largest mean absolute error first; one line per channel)"
    return series_figure(series, captions, title, columns)


def series_figure(series: list[np.ndarray], captions: list[str], title: str, columns: int = 3) -> Figure:
    """Series (steps, channels), each as line plots of its channels under its caption, in a grid under ``title``."""
    n = len(series)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    band, panel_w, panel_h = 0.4, 2.6, 1.5  # inches: the title band, each panel
    width, height = panel_w * cols, panel_h * rows + band
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(
        left=0.35 / width, right=1 - 0.1 / width, bottom=0.25 / height, top=1 - band / height, wspace=0.3, hspace=0.45
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, s, caption in zip(axes, series, captions):
        ax.plot(s, linewidth=0.8)
        ax.set_title(caption, fontsize=7, pad=2)
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.margins(x=0)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=8, y=1 - 0.05 / height, va="top")
    return fig


def scatter_figure(true: np.ndarray, predicted: np.ndarray, names: list[str], what: str) -> Figure:
    """Predicted against true values (``(n, outputs)`` each, NaN where nothing is scored), one panel per output
    named in ``names``, with the line where they are equal; ``what``: the points, for the title."""
    k = true.shape[1]
    panel, title = 2.8, 0.35  # inches
    width, height = panel * k, panel + title
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - title / height)
    fig.subplots_adjust(wspace=0.35)
    axes = fig.subplots(1, k, squeeze=False).ravel()
    for ax, t, p, name in zip(axes, true.T, predicted.T, names):
        scored = np.isfinite(t) & np.isfinite(p)
        t, p = t[scored], p[scored]
        ax.scatter(t, p, s=6, alpha=0.6, linewidths=0)
        if len(t):
            low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            ax.plot([low, high], [low, high], color="gray", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"true {label(name)}", fontsize=7)
        ax.set_ylabel("predicted", fontsize=7)
        ax.tick_params(labelsize=6, length=2, pad=1)
    fig.suptitle(f"predicted vs true: {what}", fontsize=8, y=1 - 0.05 / height, va="top")
    return fig
