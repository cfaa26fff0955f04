"""Stop at a step boundary (or between evaluation batches) on SIGINT/SIGTERM/SIGUSR2 so the training loop can
checkpoint first; commands that keep no state (evaluate, predict) stop at once with one line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Stopped(Exception):
    """An evaluation pass gave up between two batches: every rank agreed on the stop signal ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class GracefulStop:
    """Records the first stop signal; the loop polls ``requested`` after each step and before each evaluation batch.

    A signal whose handler someone else already set is left alone, except SIGUSR2: submitit sends it
    on pre-emption or timeout (while ignoring SIGTERM by design), so after our checkpoint
    ``hand_over`` calls submitit's own handler, which requeues the job.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)):
            if sig is None:
                continue
            current = signal.getsignal(sig)
            if sig != getattr(signal, "SIGUSR2", None) and current not in (signal.SIG_DFL, signal.default_int_handler):
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever runs us
                return self
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signum

    def hand_over(self, signum: int) -> None:
        """After the checkpoint for ``signum`` (the stop every rank agreed on): let a chained handler (submitit's)
        act, else exit with 128 + signal."""
        previous = self._previous.get(signum)
        self.__exit__()
        if signum == getattr(signal, "SIGUSR2", None) and callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)


class _Signalled(BaseException):
    """Raised by ``stopped_in_one_line``'s handler: a BaseException, so no ``except Exception`` on the way takes it
    for a failure of its own."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stopped_in_one_line(what: str) -> Iterator[None]:
    """SIGTERM or SIGINT ends the command at once with one line on stderr (``Stopped by SIGTERM: <what> did not
    finish.``) and exit 128 + signal, as training says so: not a silent 143, nor a KeyboardInterrupt traceback.
    For commands with nothing to save; files they write are written atomically, so none is left half-written."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Signalled as s:
        print(f"Stopped by {signal.Signals(s.signum).name}: {what} did not finish.", file=sys.stderr)
        raise SystemExit(128 + s.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
