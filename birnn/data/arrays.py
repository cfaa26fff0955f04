"""``data=arrays``: train on arrays that already sit in a ``.npz`` or ``.pt`` file, no code needed.

The file holds ``x_train``, ``y_train``, ``x_test`` and ``y_test``: inputs ``(N, steps, features)`` of any
float (or integer) dtype and integer labels ``(N,)``, plus optionally ``classes``, one name per label
(else the names are ``0 .. max label``). Integer inputs ``(N, steps)`` are token IDs (0 = padding after each
sample's tokens; ``vocab_size`` or the largest ID + 1); labels ``(N, steps)`` are one tag per step, -100 at
padding (each sample's length: its tokens, or for float inputs its steps up to the last labelled one).
``.npz`` files are read without pickle (``allow_pickle=False``),
``.pt`` files with ``torch.load(weights_only=True)``. Every problem with the file is one clear error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from birnn.data import normalize
from birnn.data.checks import first_outside, misplaced
from birnn.data.pipeline import IGNORE, Splits
from birnn.schema.errors import BirnnError, first_line, load_reason
from birnn.system.files import not_regular

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 100_000  # without ``classes``, labels beyond this are a mistake (10**9 would mean 10**9 names)
SUFFIXES = (".npz", ".pt")


def read(path: Path) -> dict:
    """The file's named arrays as numpy arrays (tensors and lists converted)."""
    if path.suffix not in SUFFIXES:
        raise BirnnError(f"data.path={path}: expected a {' or '.join(SUFFIXES)} file")
    if (reason := not_regular(path)) is not None:
        raise BirnnError(f"data.path={path}: {reason}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy, zipfile and torch raise many types; a refused pickle says "Weights only"
        if "Weights only load failed" in str(e):
            raise BirnnError(
                f"{path}: torch.load(weights_only=True) refused it ({load_reason(e)}); save only "
                "tensors, lists and strings, e.g. torch.save({'x_train': x, ...}, path)"
            ) from None
        raise BirnnError(f"{path} is not a readable {path.suffix} file: {load_reason(e)}") from None
    if not isinstance(content, dict):
        raise BirnnError(f"{path} holds a {type(content).__name__}; expected a dict with keys {', '.join(KEYS)}")
    return {k: _array(v, k, path) for k, v in content.items()}


def _array(value: object, key: str, path: Path) -> np.ndarray:
    """A stored value as a numpy array: any dense, sparse, low-precision or grad-tracking tensor, or a list."""
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            t = t.to_dense() if t.layout != torch.strided else t
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise BirnnError(
            f"{key} in {path} cannot be read as one array ({first_line(e)}); store a tensor or an "
            "array of equal-length rows"
        ) from None


def _tokens(arrays: dict, key: str, source: Path, vocab_size: int) -> torch.Tensor:
    """Token IDs ``(N, steps)``, each in ``0 .. vocab_size - 1``."""
    if (bad := first_outside(arrays[key], vocab_size)) is not None:
        raise BirnnError(f"{key} in {source} holds token ID {bad}, outside 0..{vocab_size - 1} (data.vocab_size)")
    return torch.from_numpy(arrays[key].astype(np.int64))


def _inputs(arrays: dict, key: str, source: Path) -> torch.Tensor:
    x = arrays[key]
    if x.dtype.kind not in "fiu":
        raise BirnnError(f"{key} in {source} has dtype {x.dtype}; expected numbers (float)")
    if x.ndim != 3 or 0 in x.shape:
        hint = " (one feature per step? add an axis: x[..., None])" if x.ndim == 2 else ""
        raise BirnnError(f"{key} in {source} has shape {x.shape}; expected (N, steps, features), none of them 0{hint}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        x = torch.from_numpy(x.astype(np.float32, copy=False))  # float32 already: the file's array, not a copy
    for rows in normalize.chunks(x):  # in chunks: isfinite's temporaries over all of x would be 1.75x its size
        bad = (~torch.isfinite(x[rows])).flatten(1).any(1).nonzero()
        if len(bad):
            raise BirnnError(
                f"{key} in {source} holds NaN, inf or values beyond float32's range "
                f"(first in sample {rows.start + int(bad[0])})"
            )
    return x


def _labels(arrays: dict, key: str, shape: tuple[int, ...], source: Path) -> torch.Tensor:
    """Integer labels of ``shape``: ``(N,)``, or ``(N, steps)`` for one per step."""
    y = arrays[key]
    if y.dtype.kind not in "iu" or y.shape != shape:
        raise BirnnError(
            f"{key} in {source} has dtype {y.dtype} and shape {y.shape}; expected integer labels of shape "
            f"({shape[0]},), one per sample, or ({shape[0]}, steps), one per step (values: task=regression)"
        )
    return torch.from_numpy(y.astype(np.int64))


def lengths_of(valid: torch.Tensor, key: str, source: Path) -> torch.Tensor | None:
    """Each row's length: up to its last True in ``valid`` (N, steps); None when every row is full."""
    steps = torch.arange(1, valid.shape[1] + 1)
    lengths = (valid * steps).amax(1)
    empty = (lengths == 0).nonzero()
    if len(empty):
        raise BirnnError(f"sample {int(empty[0])} of {key} in {source} is empty (all padding)")
    return None if bool((lengths == valid.shape[1]).all()) else lengths


def _per_step(y: torch.Tensor, lengths: torch.Tensor | None, key: str, source: Path) -> torch.Tensor:
    """Per-step labels with every step beyond a length set to ``IGNORE``; a missing label inside one is an error."""
    if lengths is not None:
        y = y.masked_fill(torch.arange(y.shape[1]) >= lengths.unsqueeze(1), IGNORE)
    if wrong := misplaced(y.numpy(), None if lengths is None else lengths.numpy()):
        raise BirnnError(f"{key} in {source}: {wrong}")
    return y


def load_arrays(
    root: str = "data",
    download: bool = False,
    path: str | None = None,
    vocab_size: int | None = None,
    task: str = "classification",
) -> Splits:
    """The splits in the file ``path`` (relative to the working directory); ``root``/``download`` are unused.
    ``vocab_size``: token data's number of IDs (None: the largest ID in the file + 1). ``task="regression"``
    (``task=regression``): ``y_*`` are values, any numeric dtype, read as given (``birnn.data.targets.as_values``
    checks them; ``classes``, if present, names the outputs)."""
    if not path:
        raise BirnnError("data=arrays needs the file: data.path=FILE.npz (or .pt)")
    source = Path(path)
    arrays = read(source)
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise BirnnError(f"{source} has no {', '.join(missing)} (it needs {', '.join(KEYS)}; optional: classes)")
    tokens = arrays["x_train"].ndim == 2 and arrays["x_train"].dtype.kind in "iu"
    if tokens:
        top_id = int(max(arrays["x_train"].max(initial=0), arrays["x_test"].max(initial=0)))
        vocab_size = vocab_size or top_id + 1
        train_x, test_x = (_tokens(arrays, k, source, vocab_size) for k in ("x_train", "x_test"))
        if arrays["x_test"].ndim != 2:
            raise BirnnError(f"{source}: x_train holds token IDs (N, steps) but x_test has shape {test_x.shape}")
    else:
        train_x, test_x = _inputs(arrays, "x_train", source), _inputs(arrays, "x_test", source)
        if train_x.shape[2] != test_x.shape[2]:
            raise BirnnError(
                f"{source}: x_train has {train_x.shape[2]} features per step but x_test has {test_x.shape[2]}"
            )
        vocab_size = None
    if task == "regression":
        return _values(arrays, source, train_x, test_x, vocab_size, tokens)
    per_step = arrays["y_train"].ndim == 2
    train_y, test_y = (
        _labels(arrays, k, tuple(x.shape[: 1 + per_step]), source)
        for k, x in (("y_train", train_x), ("y_test", test_x))
    )
    lengths = {}
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        valid = x != 0 if tokens else (y != IGNORE) if per_step else None
        lengths[split] = lengths_of(valid, f"{'x' if tokens else 'y'}_{split}", source) if valid is not None else None
    if per_step:
        train_y = _per_step(train_y, lengths["train"], "y_train", source)
        test_y = _per_step(test_y, lengths["test"], "y_test", source)
    top = int(max(train_y.max(), test_y.max()))
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "USiu":
            raise BirnnError(
                f"classes in {source} must be a list of names; got dtype {names.dtype} shape {names.shape}"
            )
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
    elif top >= MAX_CLASSES:
        raise BirnnError(
            f"{source} has label {top}: without a classes list that means {top + 1} classes. Labels "
            f"must be 0..K-1 (at most {MAX_CLASSES} without classes): renumber them"
        )
    else:
        classes = [str(i) for i in range(top + 1)]
    for key, y in (("y_train", train_y), ("y_test", test_y)):
        if (bad := first_outside((y[y != IGNORE] if per_step else y).numpy(), len(classes))) is not None:
            raise BirnnError(
                f"{key} in {source} holds label {bad}, outside classes "
                f"(labels must be 0..{len(classes) - 1}, one per name in classes)"
            )
    return Splits(
        train_x,
        train_y,
        test_x,
        test_y,
        classes=classes,
        train_lengths=lengths["train"],
        test_lengths=lengths["test"],
        kind="tokens" if tokens else "series",
        vocab_size=vocab_size,
    )


def _values(
    arrays: dict, source: Path, train_x: torch.Tensor, test_x: torch.Tensor, vocab_size: int | None, tokens: bool
) -> Splits:
    """The splits of a regression file: numeric ``y_*`` as float tensors, one row per sample; token inputs' lengths
    from their padding (ID 0)."""
    ys = {}
    for key, x in (("y_train", train_x), ("y_test", test_x)):
        y = arrays[key]
        if y.dtype.kind not in "iuf" or len(y) != len(x):
            raise BirnnError(
                f"{key} in {source} has dtype {y.dtype} and shape {y.shape}; task=regression needs numbers, one row "
                f"per sample ({len(x)})"
            )
        ys[key] = torch.from_numpy(y.astype(np.float64 if y.dtype == np.float64 else np.float32))
    names = arrays["classes"] if "classes" in arrays else np.array([], dtype=str)
    lengths = {
        split: lengths_of(x != 0, f"x_{split}", source) if tokens else None
        for split, x in (("train", train_x), ("test", test_x))
    }
    return Splits(
        train_x,
        ys["y_train"],
        test_x,
        ys["y_test"],
        classes=[c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()],
        train_lengths=lengths["train"],
        test_lengths=lengths["test"],
        kind="tokens" if tokens else "series",
        vocab_size=vocab_size,
    )
