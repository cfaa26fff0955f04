"""Where modules may come from: the working directory only where the user's own code is expected.

``train``, ``pack`` and ``search`` run the user's own config, so its ``_target_`` modules may live in the working
directory (``birnn.schema.config.import_from_cwd``). ``evaluate``, ``predict`` and ``export`` restore a
checkpoint that may have come from elsewhere, often into a folder of other received files: they never search the
working directory, except while importing or calling a module the user allowed (``--allow``, see
``birnn.schema.trust``), and then for that module and the siblings it imports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def drop_cwd(module_name: str) -> None:
    """Under ``python -m birnn.X`` (``module_name`` is ``"__main__"``) take off the working directory that Python
    put first on ``sys.path``. Call it before any other import: torch imports optional modules (``tabulate``,
    ``gmpy2``, ``z3``) by name, predict ``tokenizers``."""
    if module_name != "__main__" or getattr(sys.flags, "safe_path", False):
        return  # a console script starts with its bin folder first; -P / PYTHONSAFEPATH adds nothing
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


@contextmanager
def cwd_importable() -> Iterator[None]:
    """The working directory on ``sys.path`` (last, so installed packages still come first) until the block ends."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        yield
        return
    sys.path.append(cwd)
    try:
        yield
    finally:
        if cwd in sys.path:
            sys.path.remove(cwd)
