"""One writer per run dir, and nothing left behind by a run that was refused before it trained.

The lock is an ``flock`` on ``<dir>/.lock`` (``filelock``): the kernel drops it when its process dies, so a
crashed or killed run leaves no stale lock, and its legitimate successors (a SLURM requeue, a torchrun
restart) get in. Only one process per run dir takes it: the main rank of a distributed run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from birnn.errors import BirnnError

LOCK = ".lock"


class Refused(BirnnError):
    """A run stopped before training; it removed what it had written (its callbacks write nothing either)."""


class Busy(Refused):
    """Another live process holds the run dir (or sweep dir)."""


def lock(folder: Path, what: str = "run dir") -> FileLock:
    """Lock ``folder`` for this process (re-entrant); Busy at once when another process holds it."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    held = FileLock(folder / LOCK, is_singleton=True, blocking=False)
    try:
        held.acquire()
    except Timeout:
        raise Busy(
            f"{folder} is in use by another birnn process (one writer per {what}): wait for it to end, "
            f"or choose another {'hydra.sweep.dir' if what == 'sweep dir' else 'hydra.run.dir'}."
        ) from None
    return held


def _fresh(run_dir: Path, record: Path | None, log_file: Path | None) -> bool:
    """Whether ``run_dir`` holds nothing but what this run's start wrote (Hydra's record, its log, the lock)."""
    if record is not None and record != run_dir / ".hydra":  # Hydra's record went to .hydra/resume-N: not new
        return False
    ours = {".hydra", LOCK, log_file.name if log_file else ""}
    return all(p.name in ours for p in run_dir.iterdir())


def remove_new_dirs(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its empty parents up to (not including) ``stop``."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent == stop or stop not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty
            break


@contextmanager
def claim(
    run_dir: Path, record: Path | None, log_file: Path | None, hold: bool = True, clean: bool = True
) -> Iterator[Callable[[], None]]:
    """Hold ``run_dir`` for the run; until the yielded ``started()`` is called, a failure removes what this run
    wrote there (the whole dir if it is new, else its ``.hydra/resume-N`` record and its log lines) and a
    BirnnError becomes ``Refused``. ``hold=False``: a non-main rank, which neither locks nor cleans.
    ``clean=False`` (a multirun job: its dir is the sweep's record of that point) keeps what failed."""
    cwd = Path.cwd().resolve()
    run_dir = run_dir.resolve()
    if not hold:
        yield lambda: None
        return
    try:
        held = lock(run_dir)
    except Busy:
        if record is not None and record.name.startswith("resume-"):
            shutil.rmtree(record, ignore_errors=True)  # our own record; the dir's files are the holder's
        raise
    fresh = _fresh(run_dir, record, log_file)
    log_size = log_file.stat().st_size if log_file is not None and log_file.is_file() else 0
    started = False

    def start() -> None:
        nonlocal started
        started = True

    try:
        yield start
    except BaseException as e:
        if not started and clean:
            if fresh:
                remove_new_dirs(run_dir, cwd)
            else:
                if record is not None and record.name.startswith("resume-"):
                    shutil.rmtree(record, ignore_errors=True)
                if log_file is not None and log_file.is_file():
                    with open(log_file, "r+b") as f:
                        f.truncate(log_size)
            if isinstance(e, BirnnError) and not isinstance(e, Refused):
                raise Refused(str(e)) from None
        raise
    finally:
        held.release()
