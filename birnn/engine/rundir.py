"""One writer per run dir, and nothing left behind by a run that was refused before it trained.

The lock is an ``flock`` on the run dir's own descriptor: nothing inside the dir can be deleted or swapped to
let a second writer in, and the kernel drops the lock when its process dies, so a crashed or killed run leaves
no stale lock and its legitimate successors (a SLURM requeue, a torchrun restart) get in. On a file system
that cannot lock a directory (some NFS and Lustre mounts) the lock falls back to ``<dir>/.lock``, and
``check`` (called before every checkpoint write) verifies that the held file is still the one at that path.
Only one process per run dir takes it: the main rank of a distributed run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from birnn.schema.errors import BirnnError, Busy, Lost, Refused

LOCK = ".lock"
_HELD: dict[Path, Held] = {}  # this process's locks, by resolved dir (re-entrant)


class Held:
    """A held run-dir lock: the locked descriptor (the dir, or its ``.lock`` file) and how often it was taken."""

    def __init__(self, folder: Path, fd: int, path: Path):
        self.folder, self.fd, self.path, self.count = folder, fd, path, 1

    def check(self) -> None:
        """``Lost`` if the locked dir or lock file is no longer the one at its path (deleted, replaced)."""
        try:
            now = os.lstat(self.path)
        except OSError:
            now = None
        held = os.fstat(self.fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise Lost(
                f"{self.path} was deleted or replaced while this run held it: another process may be writing "
                f"{self.folder}. Stopping without writing there."
            )

    def release(self) -> None:
        self.count -= 1
        if self.count == 0:
            _HELD.pop(self.folder, None)
            os.close(self.fd)  # closing the descriptor drops the flock


def _busy(folder: Path, what: str) -> Busy:
    return Busy(
        f"{folder} is in use by another birnn process (one writer per {what}): wait for it to end, "
        f"or choose another {'hydra.sweep.dir' if what == 'sweep dir' else 'hydra.run.dir'}."
    )


def _lock_file(folder: Path) -> int:
    """Open ``<folder>/.lock`` for the fallback lock: a regular file, never through a link."""
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise BirnnError(f"{path} cannot be used as the run dir's lock ({e.strerror}): remove it.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BirnnError(f"{path} is not a regular file, so it cannot be the run dir's lock: remove it.")
    return fd


def lock(folder: Path, what: str = "run dir") -> Held:
    """Lock ``folder`` for this process (re-entrant); Busy at once when another process holds it."""
    folder = folder.resolve()
    if folder in _HELD:
        _HELD[folder].count += 1
        return _HELD[folder]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd, path = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), folder
    except OSError as e:
        raise BirnnError(f"{folder} cannot be opened as a {what} ({e.strerror}).") from None
    for attempt in ("dir", "file"):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, what) from None
        except OSError as e:  # this file system cannot flock a directory: lock a file in it instead
            os.close(fd)
            if attempt == "file" or e.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise BirnnError(f"Cannot lock {path} ({e.strerror}).") from None
            fd, path = _lock_file(folder), folder / LOCK
    _HELD[folder] = Held(folder, fd, path)
    return _HELD[folder]


def check(folder: Path) -> None:
    """Before a write into ``folder``: ``Lost`` unless this process still holds it (a no-op if it never did)."""
    held = _HELD.get(folder.resolve())
    if held is not None:
        held.check()


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
