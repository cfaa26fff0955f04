"""Checkpoints: atomic writes, safe loads (``weights_only=True``), fallback to the previous valid one."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch
from torch import nn

from birnn.errors import BirnnError, first_line

log = logging.getLogger(__name__)

FORMAT = "birnn-checkpoint-v1"
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
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


def save(state: dict, folder: Path, name: str = LAST) -> Path:
    """Save ``state`` as ``folder/name``; saving ``last.pt`` first keeps the old one as ``previous.pt``."""
    path = folder / name
    try:
        if name == LAST:
            tmp = folder / f".{LAST}.next"
            atomic_write(tmp, lambda f: torch.save({"format": FORMAT, **state}, f))
            if path.exists():
                os.replace(path, folder / PREVIOUS)
            os.replace(tmp, path)
        else:
            atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    except OSError as e:
        raise BirnnError(f"Could not write checkpoint {path}: {e.strerror or e}. "
                         f"Earlier checkpoints in {folder} are intact; free space and resume.") from None
    return path


def load(path: Path) -> dict:
    """Load a birnn checkpoint with ``weights_only=True`` onto the CPU; a clear BirnnError if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BirnnError(f"No checkpoint at {path}") from None
    except Exception as e:
        raise BirnnError(f"{path} is not a readable checkpoint (corrupt or truncated?): {first_line(e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BirnnError(f"{path} is not a birnn checkpoint (expected format {FORMAT!r}).")
    return state


def load_latest(folder: Path) -> tuple[dict, Path] | None:
    """The newest valid checkpoint in ``folder`` (``last.pt``, else ``previous.pt``), or None if there is none.

    A corrupt ``last.pt`` falls back to ``previous.pt`` with a warning; if nothing valid is left, BirnnError.
    """
    candidates = [p for p in (folder / LAST, folder / PREVIOUS) if p.exists()]
    errors = []
    for path in candidates:
        try:
            state = load(path)
        except BirnnError as e:
            errors.append(str(e))
            continue
        if errors:
            log.warning("%s Falling back to %s (step %d).", errors[0], path, state["progress"]["global_step"])
        return state, path
    if errors:
        raise BirnnError(" ".join(errors) + f" No valid checkpoint is left in {folder}: "
                         "move that run dir aside (or delete its checkpoints/) to start over.")
    return None


def load_model_state(model: nn.Module, state_dict: dict, source: Path | str) -> None:
    """``load_state_dict`` with a message naming every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    problems += [f"{k}: missing in checkpoint" for k in own if k not in state_dict]
    problems += [f"{k}: not in this model" for k in state_dict if k not in own]
    if problems:
        raise BirnnError(f"{source} holds a different architecture than the configured model:\n  "
                         + "\n  ".join(problems))
    model.load_state_dict(state_dict)


def non_finite(state_dict: dict) -> str | None:
    """The first floating tensor of ``state_dict`` holding NaN or inf, as ``name (n of m values)``; else None."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return f"{name}: {bad} of {tensor.numel()} values"
    return None
