"""The one exception type for expected user errors, and how to quote a library's error in one line."""

from hydra.errors import CompactHydraException


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class BirnnError(CompactHydraException):
    """A bad input (config value, dataset, checkpoint, device) reported as one clear message.

    Hydra prints a ``CompactHydraException`` as its message alone (no traceback) and exits 1; in a
    multirun the failed job is recorded and the other jobs still run.
    """


def check_config(checks: list[tuple[bool, str]]) -> None:
    """Raise one BirnnError listing the message of every ``(ok, message)`` check that failed."""
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise BirnnError("Invalid config:\n  " + "\n  ".join(problems))
