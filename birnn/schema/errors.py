"""The one exception type for expected user errors, and how to quote a library's error in one line."""

import re

from hydra.errors import CompactHydraException


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_reason(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line. A refused pickle is described in birnn's words,
    quoting from the file only the name of the global it asks for: torch's own message advises loading with
    ``weights_only=False``, which would run the file's code, and that advice is never repeated."""
    text = str(error)
    if "weights only" not in text.lower() and "weights_only" not in text.lower():
        return first_line(error)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    return (
        f"it holds objects other than tensors and plain values{f' ({named[1]})' if named else ''}, "
        "which birnn never unpickles"
    )


class BirnnError(CompactHydraException):
    """A bad input (config value, dataset, checkpoint, device) reported as one clear message.

    Hydra prints a ``CompactHydraException`` as its message alone (no traceback) and exits 1; in a
    multirun the failed job is recorded and the other jobs still run.
    """


class Refused(BirnnError):
    """A run stopped before training; it removed what it had written (its callbacks write nothing either)."""


class Busy(Refused):
    """Another live process holds the run dir (or sweep dir)."""


class Lost(BirnnError):
    """The run's dir was removed or replaced while it ran: nothing more of the run is written at that path (no
    checkpoint, tracker event, ``metrics.json`` or ``status.json``)."""


def check_config(checks: list[tuple[bool, str]]) -> None:
    """Raise one BirnnError listing the message of every ``(ok, message)`` check that failed."""
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise BirnnError("Invalid config:\n  " + "\n  ".join(problems))
