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
    images: np.ndarray, true: list[str], predicted: list[str], total: int, columns: int = 8
) -> Figure:
    """Images (n, h, w) in [0, 1] in one mosaic, each under a caption: its true and its predicted class.

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
    fig.suptitle(f"true \u2192 predicted: {n} of {total} misclassified", fontsize=8, y=1 - 0.05 / height, va="top")
    return fig


def misclassified_series_figure(
    series: list[np.ndarray], true: list[str], predicted: list[str], total: int, columns: int = 3
) -> Figure:
    """Series (steps, channels), each as line plots of its channels, titled with its true and predicted class."""
    true, predicted = [label(c) for c in true], [label(c) for c in predicted]
    n = len(series)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    title, panel_w, panel_h = 0.4, 2.6, 1.5  # inches
    width, height = panel_w * cols, panel_h * rows + title
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(
        left=0.35 / width, right=1 - 0.1 / width, bottom=0.25 / height, top=1 - title / height, wspace=0.3, hspace=0.45
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, s, t, p in zip(axes, series, true, predicted):
        ax.plot(s, linewidth=0.8)
        ax.set_title(f"true {t} \u2192 predicted {p}", fontsize=7, pad=2)
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.margins(x=0)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{n} of {total} misclassified (one line per channel)", fontsize=8, y=1 - 0.05 / height, va="top")
    return fig
