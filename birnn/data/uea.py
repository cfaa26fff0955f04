"""Sequence sources: problems of the UCR/UEA time-series archives in their own ``.ts`` format.

``data=uea data.name=JapaneseVowels`` reads ``<root>/<name>/<name>_TRAIN.ts`` and ``_TEST.ts`` with aeon's
reader (the optional extra ``birnn[timeseries]``); ``root`` null means the problems bundled in the aeon
wheel. Series become ``(steps, channels)`` float32 inputs, zero-padded to the longest, with per-sample
lengths when the lengths differ. ``predict`` reads ``.ts`` files through :func:`read_series`. A regression
problem (``@targetLabel true``, as the TSER archive's) gives its float values under ``task=regression``.

Missing values (``?`` or ``NaN`` in a file) are filled with the channel's mean over the training split's
observed values: filling with the mean leaves the mean unchanged, so after ``data.normalize`` they are
exactly 0, and never reach the loss as NaN. With ``data.normalize_series`` each is filled with its own series'
mean over that channel's observed values instead (0 for a channel with none), so it is exactly 0 after the
series' z-normalization, whose mean it leaves unchanged (its std counts the filled steps as valid steps).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from birnn.data.pipeline import Splits
from birnn.schema.errors import BirnnError, first_line
from birnn.system.files import MAX_DATA_BYTES, Unreadable, not_regular, open_regular

INSTALL_HINT = 'pip install -e ".[timeseries]"'
ARCHIVE_URL = "https://timeseriesclassification.com"


def _reader():
    try:
        from aeon.datasets import load_from_ts_file
    except ImportError:
        raise BirnnError(f"Reading .ts files needs aeon, an optional extra: {INSTALL_HINT}") from None
    return load_from_ts_file


def bundled_root() -> Path:
    """The folder of the UCR/UEA problems that ship inside the aeon wheel (``aeon/datasets/data``)."""
    _reader()
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data"


def _classification(train: Path) -> bool:
    """Whether a ``.ts`` file's header says it holds class labels (``@classLabel true ...``)."""
    with open(train, encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith(("@classlabel", "@data")):
                return line.lower().split()[:2] == ["@classlabel", "true"]
    return False


def bundled_problems() -> list[str]:
    """Names of the bundled classification problems (a ``<name>_TRAIN.ts`` and ``_TEST.ts`` each)."""
    return sorted(
        d.name
        for d in bundled_root().iterdir()
        if (d / f"{d.name}_TEST.ts").is_file()
        and (d / f"{d.name}_TRAIN.ts").is_file()
        and _classification(d / f"{d.name}_TRAIN.ts")
    )


def read_ts(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    """All series of a ``.ts`` file as float32 ``(steps, channels)`` arrays (NaN where a value is missing),
    and their class labels as strings, or a regression file's targets (``@targetLabel true``) as float64 values
    (None when the file has neither).

    aeon's reader lower-cases the labels. Any problem with the file is one ``BirnnError`` naming it. The file
    follows birnn's rule for files it reads (``birnn.system.files``): a regular file (a FIFO or device is refused,
    not waited on) of at most ``MAX_DATA_BYTES``.
    """
    load = _reader()
    with open_regular(path, MAX_DATA_BYTES):  # held open while aeon reads it by name
        try:
            data, labels, meta = load(str(path), return_meta_data=True)
        except Exception as e:  # aeon raises OSError for bad headers, ValueError for bad numbers, and others
            raise BirnnError(f"{path} is not a readable .ts file: {first_line(e)}") from None
    if len(data) == 0:
        raise BirnnError(f"{path} is not a readable .ts file: it holds no series")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        series = [np.ascontiguousarray(np.asarray(s, dtype=np.float32).T) for s in data]
    empty = next((i for i, s in enumerate(series) if s.size == 0 or np.isnan(s).all()), None)
    if empty is not None:
        raise BirnnError(f"{path} is not a readable .ts file: series {empty} has no values")
    huge = next((i for i, s in enumerate(series) if np.isinf(s).any()), None)
    if huge is not None:
        raise BirnnError(
            f"{path}: series {huge} holds inf or values beyond float32's range (|x| > 3.4e38): fix or remove it"
        )
    if meta.get("targetlabel") and len(labels) == len(series):
        return series, np.asarray(labels, dtype=np.float64)
    has_labels = meta["classlabel"] and len(labels) == len(series)
    return series, np.asarray(labels).astype(str) if has_labels else None


def channel_means(series: list[np.ndarray]) -> np.ndarray:
    """Per-channel mean over every observed (non-NaN) value; 0 for a channel never observed."""
    values = np.concatenate(series)
    observed = ~np.isnan(values)
    counts = observed.sum(0)
    sums = np.where(observed, values, 0).sum(0, dtype=np.float64)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0).astype(np.float32)


def fill_missing(series: list[np.ndarray], means: np.ndarray | None) -> list[np.ndarray]:
    """Missing values filled with ``means`` per channel; None: with each series' own (``channel_means`` of it)."""
    return [
        np.where(np.isnan(s), channel_means([s]) if means is None else means, s) if np.isnan(s).any() else s
        for s in series
    ]


def pad(series: list[np.ndarray], steps: int) -> Tensor:
    """Series (length, channels) zero-padded at the end to ``(N, steps, channels)``."""
    x = pad_sequence([torch.from_numpy(s) for s in series], batch_first=True)
    return torch.nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]))


def _label_order(label: str) -> tuple:
    """Numbers in numeric order (``2`` before ``10``), then any other labels alphabetically."""
    return (0, float(label), label) if re.fullmatch(r"[-+]?\d+(\.\d*)?", label) else (1, 0.0, label)


def _files(root: str | None, name: str | None) -> tuple[Path, Path]:
    folder = bundled_root() if root is None else Path(root).expanduser().resolve()
    if not name:
        raise BirnnError(f"data=uea needs a problem: data.name=NAME (bundled: {', '.join(bundled_problems())})")
    train, test = (folder / name / f"{name}_{split}.ts" for split in ("TRAIN", "TEST"))
    for path in (train, test):  # a FIFO or device says what it is (read_ts refuses it), not "not found"
        if path.exists() and not_regular(path):
            raise Unreadable(path, not_regular(path))
    if not (train.is_file() and test.is_file()):
        where = "the problems bundled with aeon" if root is None else f"data.root={root}"
        raise BirnnError(
            f"UEA/UCR problem {name!r} not found in {where}: looked for {train} and {test}. "
            f"Bundled: {', '.join(bundled_problems())}; for any other, download the archive from "
            f"{ARCHIVE_URL} and set data.root to the folder holding <name>/<name>_TRAIN.ts (birnn does not "
            "download it)."
        )
    return train, test


def load_uea(
    root: str | None = None,
    download: bool = False,
    name: str | None = None,
    task: str = "classification",
    normalize_series: bool = False,
) -> Splits:
    """A UCR/UEA classification problem from ``<root>/<name>/<name>_TRAIN.ts`` and ``_TEST.ts``, or with
    ``task="regression"`` (``task=regression``) a TSER regression problem (``@targetLabel true``).

    ``root`` None: the problems bundled with aeon. ``download`` must stay false: birnn does not download
    archive problems. Classes are the training labels, sorted (numbers numerically); a regression problem's
    targets are its float64 values (one output, ``value``). Lengths are None when every series of both splits has
    the same length. A file of the other kind than ``task`` is one error naming the ``task`` it needs.
    ``normalize_series`` (``data.normalize_series``, passed by ``birnn.data.pipeline.load_source``): missing values
    take their own series' mean.
    """
    if download:
        raise BirnnError(
            f"data.download=true: birnn does not download archive problems; download the archive "
            f"from {ARCHIVE_URL} and set data.root to it"
        )
    train_file, test_file = _files(root, name)
    train, train_labels = read_ts(train_file)
    test, test_labels = read_ts(test_file)
    for path, labels in ((train_file, train_labels), (test_file, test_labels)):
        values = labels is not None and labels.dtype.kind == "f"
        if task == "regression" and not values:
            raise BirnnError(
                f"{path} has no regression targets (@targetLabel true): not a regression problem"
                + ("; train it with task=classification" if labels is not None else "")
            )
        if task != "regression" and labels is None:
            raise BirnnError(f"{path} has no class labels (@classLabel true ...): not a classification problem")
        if task != "regression" and values:
            raise BirnnError(
                f"{path} holds regression targets (@targetLabel true), not classes: train it with task=regression"
            )
    channels = {s.shape[1] for s in train + test}
    if len(channels) > 1:
        raise BirnnError(f"{train_file} and {test_file} disagree on the number of channels: {sorted(channels)}")
    if task == "regression":
        train_y, test_y = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
        return _splits(train, test, train_y, test_y, ["value"], normalize_series)
    classes = sorted(set(train_labels.tolist()), key=_label_order)
    unseen = sorted(set(test_labels.tolist()) - set(classes), key=_label_order)
    if unseen:
        raise BirnnError(
            f"{test_file} has labels never seen in training: {', '.join(unseen)} "
            f"(training classes: {', '.join(classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    train_y = torch.tensor([index[c] for c in train_labels], dtype=torch.int64)
    test_y = torch.tensor([index[c] for c in test_labels], dtype=torch.int64)
    return _splits(train, test, train_y, test_y, classes, normalize_series)


def _splits(
    train: list[np.ndarray],
    test: list[np.ndarray],
    train_y: Tensor,
    test_y: Tensor,
    classes: list[str],
    normalize_series: bool = False,
) -> Splits:
    """Both splits' series, missing values filled with the training means (``normalize_series``: each series' own),
    padded, with their targets."""
    means = None if normalize_series else channel_means(train)
    train, test = fill_missing(train, means), fill_missing(test, means)
    lengths = [torch.tensor([len(s) for s in split], dtype=torch.int64) for split in (train, test)]
    steps = int(max(lengths[0].max(), lengths[1].max()))
    variable = bool((torch.cat(lengths) != steps).any())
    return Splits(
        train_x=pad(train, steps),
        train_y=train_y,
        test_x=pad(test, steps),
        test_y=test_y,
        classes=classes,
        train_lengths=lengths[0] if variable else None,
        test_lengths=lengths[1] if variable else None,
        kind="series",
    )


def read_series(
    path: Path, features: int, normalization: dict | None = None, normalize_series: bool = False
) -> list[Tensor]:
    """Every series of a ``.ts`` file, for ``predict``: float32 ``(steps, features)`` tensors in file order.

    Missing values are filled as in training: with the series' own means (``normalize_series``), else with the
    training means a normalized model stores; a model trained with neither does not know them, so such a file is
    refused.
    """
    series, _ = read_ts(path)
    wrong = next((i for i, s in enumerate(series) if s.shape[1] != features), None)
    if wrong is not None:
        raise BirnnError(f"series {wrong} has {series[wrong].shape[1]} channels; the model takes {features}")
    missing = next((i for i, s in enumerate(series) if np.isnan(s).any()), None)
    if missing is not None and normalize_series:
        series = fill_missing(series, None)
    elif missing is not None:
        if not normalization:
            raise BirnnError(
                f"series {missing} has missing values; only a model trained with data.normalize=true "
                "stores the training means they are filled with"
            )
        series = fill_missing(series, np.asarray(normalization["mean"], dtype=np.float32))
    return [torch.from_numpy(s) for s in series]
