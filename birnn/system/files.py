"""Files: atomic writes (a kill or a full disk mid-write leaves the old file as it was), and the one rule for
every file birnn reads: a regular file (a FIFO, a device or a folder is refused, never waited on), read whole only
up to a size bound, text as UTF-8 with an optional byte-order mark, JSON nested at most ``MAX_JSON_DEPTH`` deep."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from birnn.schema.errors import BirnnError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``.

    A kill or a full disk mid-write leaves the old ``path`` untouched; the temp file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` (ending in its suffix) for writers that take a path: renamed over ``path`` when
    the block ends, removed when it raises (an error, a signal), so ``path`` is never left half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # the writer reopens the file: it keeps these permissions
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading: one rule for every file birnn reads --------------------------------------------------------------

MAX_DATA_BYTES = 2**30  # a data file read whole (CSV/TSV/JSONL, CoNLL, .txt): beyond 1 GiB is refused
MAX_RECORD_BYTES = 256 * 2**20  # a file birnn wrote (manifest, metrics.json, status.json, overrides.yaml)
MAX_JSON_DEPTH = 100  # nesting deeper than any JSON birnn writes: refused before the parser recurses
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


class Unreadable(BirnnError):
    """A file birnn does not read; ``reason`` is the message without the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def not_regular(path: Path) -> str | None:
    """Why ``path`` (symlinks followed) is not a regular file to read: ``no such file``, ``a FIFO, not a regular
    file`` ...; None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file or folder"
    except OSError as e:
        return e.strerror or str(e)
    return None if stat.S_ISREG(mode) else f"{_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


def open_regular(path: Path, limit: int | None = MAX_DATA_BYTES) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (symlinks followed) of at most ``limit`` bytes (None: any
    size, for readers that stream it in bounded blocks); else ``Unreadable``. A FIFO is opened non-blocking, so
    it is refused, not waited on."""
    reason = not_regular(path)
    if reason is not None:
        raise Unreadable(path, reason)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Unreadable(path, e.strerror or str(e)) from None
    try:
        info = os.fstat(fd)  # what was opened, which may have been swapped since the stat above
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(path, f"{_KINDS.get(stat.S_IFMT(info.st_mode), 'not a regular file')}, not a regular file")
        if limit is not None and info.st_size > limit:
            raise Unreadable(path, f"{info.st_size} bytes, more than the {limit} birnn reads from such a file: refused")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
        f.raw.name = str(path)  # as open(path) names it, not by its descriptor
        return f
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, limit: int = MAX_DATA_BYTES) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (a file that grows beyond is refused)."""
    with open_regular(path, limit) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(size + 1)  # a buffer of the file's size (read(limit) would reserve the whole bound)
        if len(data) > size:  # it grew since: read on, up to the bound
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise Unreadable(path, f"more than the {limit} bytes birnn reads from such a file: refused")
    return data


def read_text(path: Path, limit: int = MAX_DATA_BYTES) -> str:
    """``read_bytes`` decoded as UTF-8 (a leading byte-order mark dropped); not UTF-8 is ``Unreadable``."""
    try:
        return read_bytes(path, limit).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def text_stream(path: Path, limit: int | None = MAX_DATA_BYTES) -> TextIO:
    """``open_regular`` as UTF-8 text for line-by-line readers (csv, JSONL): a byte-order mark dropped, no newline
    translation (the csv module's own)."""
    return io.TextIOWrapper(open_regular(path, limit), encoding="utf-8-sig", newline="")


def lines(text: str) -> list[str]:
    """``text`` split at ``\\n`` only (and a ``\\r`` before it dropped): U+2028, U+0085, form feeds ... stay inside
    their line, so line numbers are the editor's (``str.splitlines`` splits at those too)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def loads_json(text: str | bytes) -> Any:
    """``json.loads``; nesting deeper than ``MAX_JSON_DEPTH`` is a ``ValueError`` (never a RecursionError)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack:  # no recursion: the check itself must not overflow
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        items = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return data


def read_json(path: Path, limit: int = MAX_RECORD_BYTES) -> Any:
    """The JSON in the regular file ``path`` (``read_text``, ``loads_json``); invalid JSON is ``Unreadable``."""
    try:
        return loads_json(read_text(path, limit))
    except ValueError as e:
        raise Unreadable(path, f"not valid JSON ({e})") from None
