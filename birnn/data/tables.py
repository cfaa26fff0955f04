"""Parquet and CSV files as packs (``birnn-pack OUT --train FILE --test FILE``), read block by block with pyarrow.

One row per sample: a label column (integers ``0..K-1``; or float targets, stored as float64: a floating-point
Parquet column or a CSV column holding a number that is not an integer, any numbers with ``task="regression"``, or
a Parquet list column: one target per step, as long as the row's series, NaN where a step is not scored),
optionally a length column (valid steps, for variable-length series), and the inputs, either one list column per
channel (each row a list of steps) or one numeric column per step (one channel). Parquet is read by row groups, CSV
in pyarrow's blocks, so memory stays bounded by a block. A missing column, a ragged row or a value that is not a
number is one error naming the file, the row (1 = the first data row) and the column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from birnn.data.arrays import MAX_CLASSES
from birnn.data.packed import PackWriter
from birnn.schema.errors import BirnnError
from birnn.system.files import not_regular

BLOCK_ROWS = 8192  # Parquet rows per batch (CSV blocks are pyarrow's, 1 MB of text)


def _batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's record batches (only ``columns`` when given); CSV values as strings, converted by ``_numbers``."""
    if (reason := not_regular(path)) is not None:  # a FIFO would block pyarrow; streamed: no size bound
        raise BirnnError(f"{path}: {reason}")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(path).iter_batches(batch_size=BLOCK_ROWS, columns=columns)
        elif path.suffix == ".csv":
            import pyarrow.csv as csv

            names = csv.open_csv(path).schema.names
            strings = csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), include_columns=columns)
            yield from csv.open_csv(path, convert_options=strings)
        else:
            raise BirnnError(f"{path}: expected a .parquet or .csv file")
    except (OSError, pa.ArrowException) as e:
        raise BirnnError(f"{path}: {str(e).splitlines()[0]}") from None


def _numbers(values: pa.Array, path: Path, column: str, first_row: int, dtype: pa.DataType) -> pa.Array:
    """``values`` cast to ``dtype``; the first value that is not a number is an error naming its row."""
    try:
        return pc.cast(values, dtype)
    except pa.ArrowException:
        for i, v in enumerate(values.to_pylist()):
            try:
                pc.cast(pa.array([v]), dtype)
            except pa.ArrowException:
                raise BirnnError(f"{path} row {first_row + i} column {column}: {v!r} is not a number") from None
        raise


def _columns(path: Path, label: str, length: str | None) -> tuple[list[str], bool]:
    """The input columns of ``path`` and whether they are lists (one per channel)."""
    names = next(_batches(path)).schema
    if twice := next((n for n in names.names if names.names.count(n) > 1), None):
        raise BirnnError(f"{path}: column {twice!r} appears twice; name each column once")
    for needed in (label, length):
        if needed is not None and needed not in names.names:
            raise BirnnError(f"{path}: no column {needed!r} (it has {', '.join(names.names)})")
    inputs = [n for n in names.names if n not in (label, length)]
    if not inputs:
        raise BirnnError(f"{path}: no input columns beside {label!r}")
    lists = [pa.types.is_list(names.field(n).type) or pa.types.is_large_list(names.field(n).type) for n in inputs]
    if any(lists) and not all(lists):
        raise BirnnError(f"{path}: mix of list and scalar input columns ({', '.join(inputs)}); use one layout")
    return inputs, all(lists)


def _samples(path: Path, label: str, length: str | None, steps: int, values: bool) -> Iterator[tuple[np.ndarray, ...]]:
    """``(x, y, lengths)`` blocks of ``path``, ``x`` float32 (n, steps, channels) zero-padded to ``steps``, ``y``
    int64 labels or (``values``) float64 targets, each finite; a list label column: one target per step
    ``(n, steps)``, NaN beyond a row's length (and where the list holds NaN: not scored)."""
    inputs, lists = _columns(path, label, length)
    row = 1
    for batch in _batches(path):
        n = batch.num_rows
        lengths = (
            _numbers(batch.column(length), path, length, row, pa.int64()).to_numpy(zero_copy_only=False)
            if length
            else None
        )
        expected = lengths if lengths is not None else np.full(n, steps)
        column = batch.column(label)
        if _is_list(column.type):
            y = np.full((n, steps), np.nan)
            y[_steps_of(column, path, label, row, steps, expected, lengths is not None)] = _numbers(
                pc.list_flatten(column), path, label, row, pa.float64()
            ).to_numpy(zero_copy_only=False)
        else:
            y = _numbers(column, path, label, row, pa.float64() if values else pa.int64()).to_numpy(
                zero_copy_only=False
            )
        if values and (bad := np.isinf(y) | (np.isnan(y) if y.ndim == 1 else False)).any():
            i = int(np.argwhere(bad)[0][0])
            raise BirnnError(f"{path} row {row + i} column {label}: target {y[bad][0]} is not a finite number")
        x = np.zeros((n, steps, len(inputs) if lists else 1), np.float32)
        for c, name in enumerate(inputs):
            column = batch.column(name)
            if not lists:
                x[:, c, 0] = _numbers(column, path, name, row, pa.float32()).to_numpy(zero_copy_only=False)
                continue
            mask = _steps_of(column, path, name, row, steps, expected, lengths is not None)
            x[:, :, c][mask] = _numbers(pc.list_flatten(column), path, name, row, pa.float32()).to_numpy(
                zero_copy_only=False
            )
        yield x, y, lengths
        row += n


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _steps_of(
    column: pa.Array, path: Path, name: str, row: int, steps: int, expected: np.ndarray, given: bool
) -> np.ndarray:
    """Where a list column's values go in ``(n, steps)``: each row's first ``expected`` steps (its length, or
    ``given`` false: the first row's); a row of another size is an error naming it."""
    sizes = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    bad = np.nonzero(sizes != expected)[0]
    if len(bad):
        i = int(bad[0])
        raise BirnnError(
            f"{path} row {row + i} column {name}: {sizes[i]} values; expected {expected[i]} "
            f"({'its length column' if given else 'as many as the first row'})"
        )
    return np.arange(steps) < sizes[:, None]


def _steps(path: Path, label: str, length: str | None) -> tuple[int, int | None]:
    """The steps a sample of ``path`` spans (the longest, for variable length) and its largest label (None: a
    label is a float, ``_integral``)."""
    inputs, lists = _columns(path, label, length)
    if not lists:
        steps = len(inputs)
    elif length:
        steps = max(
            int(pc.max(_numbers(b.column(length), path, length, 0, pa.int64())).as_py() or 0)
            for b in _batches(path, [length])
        )
    else:
        first = next(_batches(path, inputs[:1])).column(0)
        steps = int(pc.list_value_length(first)[0].as_py() or 0)
    top: int | None = -1
    row = 1
    for b in _batches(path, [label]):
        if _is_list(b.column(0).type):  # targets per step: values
            _numbers(pc.list_flatten(b.column(0)), path, label, row, pa.float64())
            top = None
        elif top is not None and (labels := _integral(b.column(0), path, label, row)) is not None:
            top = max(top, int(pc.max(labels).as_py()))
        else:
            _numbers(b.column(0), path, label, row, pa.float64())
            top = None
        row += b.num_rows
    return steps, top


def _integral(values: pa.Array, path: Path, column: str, first_row: int) -> pa.Array | None:
    """Labels ``values`` as int64, or None when one is a float (a floating-point column, or a CSV value such as
    ``3.5`` or ``4.0``); a value that is no number is an error naming its row."""
    if pa.types.is_floating(values.type):
        return None
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowException:
        _numbers(values, path, column, first_row, pa.float64())
        return None


def _values(task: str | None, top: int | None, files: dict[str, Path], label: str) -> bool:
    """Whether the labels are float targets: ``task`` says (``regression``, ``classification``), else the labels
    (a float among them)."""
    if task == "classification" and top is None:
        raise BirnnError(
            f"column {label!r} of {', '.join(map(str, files.values()))} holds numbers that are not integer class "
            "labels (or lists of them, one per step): pack them as float targets with --task regression (train "
            "with task=regression)"
        )
    return task == "regression" or (task is None and top is None)


def pack_tables(
    out: Path,
    files: dict[str, Path],
    label: str = "label",
    length: str | None = None,
    classes: list[str] | None = None,
    overwrite: bool = False,
    task: str | None = None,
) -> Path:
    """Pack Parquet/CSV ``files`` (split -> file) into ``out``: a first pass finds the steps and the labels,
    a second writes the samples block by block. ``task``: ``regression`` (float targets), ``classification``, or
    None (float targets when a label is a float)."""
    if "train" not in files or "test" not in files:
        raise BirnnError("packing tables needs --train FILE and --test FILE (and optionally --val FILE)")
    shapes = {split: _steps(path, label, length) for split, path in files.items()}
    steps = max(s for s, _ in shapes.values())
    tops = [t for _, t in shapes.values()]
    top = None if None in tops else max(tops)
    if _values(task, top, files, label):
        if classes:
            raise BirnnError("--classes names class labels; float targets (--task regression) have none")
        return _write(out, files, label, length, steps, [], overwrite, values=True)
    if not classes and top >= MAX_CLASSES:
        raise BirnnError(
            f"label {top} in {', '.join(map(str, files.values()))}: that means {top + 1} classes. Labels must be "
            f"0..K-1 (at most {MAX_CLASSES} without --classes): renumber them"
        )
    return _write(out, files, label, length, steps, classes or [str(i) for i in range(top + 1)], overwrite)


def _write(
    out: Path,
    files: dict[str, Path],
    label: str,
    length: str | None,
    steps: int,
    classes: list[str],
    overwrite: bool,
    values: bool = False,
) -> Path:
    """The second pass: every file's samples into the pack ``out``."""
    variable = length is not None
    with PackWriter(out, classes, "series", variable=variable, overwrite=overwrite, values=values) as pack:
        for split, path in files.items():
            writer = pack.split(split)
            for x, y, lengths in _samples(path, label, length, steps, values):
                writer.append(x, y, lengths)
    return out / "manifest.json"
