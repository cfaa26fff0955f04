"""The one exception type for expected user errors."""

from hydra.errors import CompactHydraException


class BirnnError(CompactHydraException):
    """A bad input (config value, dataset, checkpoint, device) reported as one clear message.

    Hydra prints a ``CompactHydraException`` as its message alone (no traceback) and exits 1; in a
    multirun the failed job is recorded and the other jobs still run.
    """
