"""The checkpoint trust rule: a ``_target_`` read from a checkpoint is data, never code.

A checkpoint someone sends you carries its run's config, and a config names callables (``data._target_``,
``model._target_``, ...). Training resolves them from the user's own config. Restoring from a checkpoint
(evaluate, predict, export) resolves a stored name only when it is one of birnn's own (``BUILTIN``) or the
user allowed it: ``--allow MODULE`` (its module or a module inside it) or the name given again on the
command line (``data._target_=...``). Anything else is refused before it is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from hydra._internal.utils import _locate

from birnn.errors import BirnnError, first_line

# birnn's own loaders, models and schedules: importing and calling these runs no code from the checkpoint.
BUILTIN = frozenset(
    {
        "birnn.data.load_mnist",
        "birnn.data.load_fashion_mnist",
        "birnn.data.load_digits",
        "birnn.arrays.load_arrays",
        "birnn.sequences.load_uea",
        "birnn.model.RNNClassifier",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.SGD",
    }
)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def allowed(target: str, allow: Iterable[str] = ()) -> bool:
    """Whether ``target`` is birnn's own or inside a module the user allowed."""
    return target in BUILTIN or any(target == m or target.startswith(f"{m}.") for m in allow)


def resolve(target: Any, key: str, allow: Iterable[str] = ()) -> Callable:
    """The callable a checkpoint names at ``key`` (e.g. ``data._target_``), if the trust rule lets it in."""
    allow = tuple(allow)
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise BirnnError(f"The checkpoint's {key} is {target!r}, not a dotted name: refusing to load it.")
    if not allowed(target, allow):
        module = target.rsplit(".", 1)[0]
        raise BirnnError(
            f"The checkpoint's {key} names {target}, which is not part of birnn: nothing a "
            f"checkpoint names is imported unless you allow it. If you trust that code, add "
            f"--allow {module}."
        )
    try:
        found = _locate(target)  # get_method's lookup, without the error it logs before raising
    except Exception as e:
        while e.__cause__ is not None:  # the ImportError under hydra's "Error loading ..." wrapper
            e = e.__cause__
        raise BirnnError(
            f"{key}={target} cannot be imported here ({type(e).__name__}: {first_line(e)}); install "
            "or put its module on the path (the working directory counts)."
        ) from None
    if not callable(found):
        raise BirnnError(f"The checkpoint's {key}={target} is not callable.")
    return found
