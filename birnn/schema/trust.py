"""The checkpoint trust rule: a ``_target_`` read from a checkpoint is data, never code.

A checkpoint someone sends you carries its run's config, and a config names callables (``data._target_``,
``model._target_``, ...). Training resolves them from the user's own config. Restoring from a checkpoint
(evaluate, predict, export) resolves a stored name only when

- it is one of birnn's own (``BUILTIN``, exact names), or a name the user gave exactly (a ``_target_=...``
  override on the command line, or ``--allow`` of the full name); or
- the user allowed its module with ``--allow MODULE`` and the object the name resolves to is a class or a
  function *defined* in MODULE or a module inside it (its ``__module__``). Reaching something else through
  an allowed module's attributes (``mymodels.torch.hub.load``, ``birnn.models.rnn.instantiate``, Hydra's) is refused.

Anything else is refused before it is imported; nothing on the built-in list instantiates further targets.

The working directory is searched only for a name the user allowed, while it is imported and called
(``birnn.schema.importpath``): a module beside a received checkpoint is never imported otherwise.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from hydra._internal.utils import _locate

from birnn.schema.config import RENAMED
from birnn.schema.errors import BirnnError, first_line
from birnn.schema.importpath import cwd_importable

# birnn's own loaders, models and schedules: importing and calling these runs no code from the checkpoint.
BUILTIN = frozenset(
    {
        "birnn.data.load_mnist",
        "birnn.data.load_fashion_mnist",
        "birnn.data.load_digits",
        "birnn.data.load_arrays",
        "birnn.data.load_uea",
        "birnn.data.load_text",
        "birnn.data.load_tagged",
        "birnn.data.load_packed",
        "birnn.models.RNNClassifier",
        "birnn.models.LSTMFCN",
        "birnn.models.InceptionTime",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.SGD",
    }
)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _inside(module: str | None, allowed: str) -> bool:
    return isinstance(module, str) and (module == allowed or module.startswith(f"{allowed}."))


def allowed(target: str, allow: Iterable[str] = ()) -> bool:
    """Whether ``target`` may be looked up at all: birnn's own, named exactly, or under an allowed module.

    A name under an allowed module passes only this first check: ``resolve`` then requires the object to be
    defined there.
    """
    return target in BUILTIN or any(target == m or _inside(target, m) for m in allow)


def _defined_in_allowed(found: Any, target: str, allow: Iterable[str]) -> bool:
    """Whether ``found`` (what ``target`` resolved to) is a class or function defined in an allowed module."""
    if target in BUILTIN or target in allow:
        return True
    kind_ok = inspect.isclass(found) or inspect.isfunction(found)
    return kind_ok and any(_inside(target, m) and _inside(getattr(found, "__module__", None), m) for m in allow)


def resolve(target: Any, key: str, allow: Iterable[str] = ()) -> Callable:
    """The callable a checkpoint names at ``key`` (e.g. ``data._target_``), if the trust rule lets it in."""
    allow = tuple(allow)
    target = RENAMED.get(target, target) if isinstance(target, str) else target  # birnn's own, moved since
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise BirnnError(f"The checkpoint's {key} is {target!r}, not a dotted name: refusing to load it.")
    if not allowed(target, allow):
        module = target.rsplit(".", 1)[0]
        raise BirnnError(
            f"The checkpoint's {key} names {target}, which is not part of birnn: nothing a "
            f"checkpoint names is imported unless you allow it. If you trust that code, add "
            f"--allow {module}."
        )
    own = target not in BUILTIN  # the user's: its module (and its siblings) may live in the working directory
    try:
        if own:
            with cwd_importable():
                found = _locate(target)  # get_method's lookup, without the error it logs before raising
        else:
            found = _locate(target)
    except Exception as e:
        while e.__cause__ is not None:  # the ImportError under hydra's "Error loading ..." wrapper
            e = e.__cause__
        raise BirnnError(
            f"{key}={target} cannot be imported here ({type(e).__name__}: {first_line(e)}); install "
            "or put its module on the path (the working directory counts)."
        ) from None
    if not _defined_in_allowed(found, target, allow):
        where = getattr(found, "__module__", None) or type(found).__name__
        raise BirnnError(
            f"The checkpoint's {key} names {target}, which is not a class or function defined in the module "
            f"you allowed (it comes from {where}): --allow trusts what a module defines, not what it imports."
        )
    if not callable(found):
        raise BirnnError(f"The checkpoint's {key}={target} is not callable.")
    return _calling_from_cwd(found) if own else found


def _calling_from_cwd(found: Callable) -> Callable:
    """``found``, called with the working directory importable (an allowed module may import siblings lazily)."""

    @functools.wraps(found)
    def call(*args: Any, **kwargs: Any) -> Any:
        with cwd_importable():
            return found(*args, **kwargs)

    return call
