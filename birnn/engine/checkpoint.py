"""Checkpoints: atomic saves, safe loads (``weights_only=True``), checksums, fallback to the previous valid one.

A checkpoint is data: it is loaded with ``weights_only=True`` (no pickled code runs) and carries a SHA-256 of
its content (every tensor's bytes and every other value), checked on load, so a flipped block inside a
tensor is caught like a truncated file and ``load_latest`` falls back to ``previous.pt``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from birnn.engine import contents
from birnn.models.crf import with_constraints
from birnn.schema.errors import BirnnError, load_reason
from birnn.system.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = "birnn-checkpoint-v1"
MAX_DEPTH = 64  # nesting of dicts and lists birnn never comes near (a config is a few levels); deeper is crafted
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


def digest(value: Any) -> str:
    """SHA-256 over a checkpoint's content: dict keys in order, tensors by dtype, shape and bytes."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(b"{")
            for k, item in v.items():
                feed(k)
                feed(item)
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[" if isinstance(v, list) else b"(")
            for item in v:
                feed(item)
            h.update(b"]")
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())

    feed(value)
    return h.hexdigest()


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether dicts and lists nest more than ``limit`` levels in ``value`` (walked without recursion, so a crafted
    file nested 100,000 deep is answered, not a RecursionError in ``digest`` or a reader)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack += [(item, depth + 1) for item in v.values()]
        elif isinstance(v, (list, tuple)):
            stack += [(item, depth + 1) for item in v]
    return False


def inflated(value: Any) -> bool:
    """Whether a tensor in ``value`` shows more elements than its storage holds (a crafted file's zero strides: a
    few bytes on disk that ``digest`` or a model would expand to gigabytes)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor) and v.numel() * v.element_size() > v.untyped_storage().nbytes():
            return True
        if isinstance(v, dict):
            stack += v.values()
        elif isinstance(v, (list, tuple)):
            stack += v
    return False


def _serialize(state: dict) -> bytes:
    """The checkpoint file's bytes, built in memory: a full disk then fails in a plain file write (OSError)."""
    content = {"format": FORMAT, **state}
    buffer = io.BytesIO()
    torch.save({**content, "checksum": digest(content)}, buffer)
    return buffer.getvalue()


def save(state: dict, folder: Path, name: str = LAST) -> Path:
    """Save ``state`` as ``folder/name``; saving ``last.pt`` first keeps the old one as ``previous.pt``."""
    path = folder / name
    blob = _serialize(state)
    try:
        if name == LAST:
            tmp = folder / f".{LAST}.next"
            atomic_write(tmp, lambda f: f.write(blob))
            if path.exists():
                os.replace(path, folder / PREVIOUS)
            os.replace(tmp, path)
        else:
            atomic_write(path, lambda f: f.write(blob))
    except OSError as e:
        raise BirnnError(
            f"Could not write checkpoint {path}: {e.strerror or e}. "
            f"Earlier checkpoints in {folder} are intact; free space and resume."
        ) from None
    return path


def load(path: Path, unverified: bool = False) -> dict:
    """Load a birnn checkpoint with ``weights_only=True`` onto the CPU; a clear BirnnError if it is not one,
    is damaged (unreadable, checksum mismatch), or holds a field of the wrong type or lacks one birnn needs
    (``birnn.engine.contents``: checked here once, so readers can rely on every field they find).

    A file without a checksum (written before birnn wrote them, or with that key damaged) is refused unless
    ``unverified`` (the user's ``--allow-unverified`` / ``trainer.allow_unverified=true``).
    """
    if path.exists() and not path.is_file():
        raise BirnnError(f"{path} is not a regular file, so not a checkpoint.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BirnnError(f"No checkpoint at {path}") from None
    except Exception as e:
        if not zipfile.is_zipfile(path):
            raise BirnnError(f"{path} is not a readable birnn checkpoint (not a file torch.save wrote).") from None
        reason = load_reason(e)
        raise BirnnError(f"{path} is not a readable birnn checkpoint (damaged or truncated: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BirnnError(f"{path} is not a birnn checkpoint (expected format {FORMAT!r}).")
    if too_deep(state):
        raise BirnnError(
            f"{path} is not a usable birnn checkpoint (crafted or damaged): values nested over {MAX_DEPTH} levels."
        )
    if inflated(state):
        raise BirnnError(
            f"{path} is not a usable birnn checkpoint (crafted or damaged): a tensor shows more values than it stores."
        )
    stored = state.pop("checksum", None)
    if stored is None and not unverified:
        raise BirnnError(
            f"{path} has no checksum, so its content cannot be verified (a file from a birnn before checksums, "
            "2026-11-29, or a damaged one). If you trust it: --allow-unverified (evaluate, predict, export) or "
            "trainer.allow_unverified=true (resuming a run)."
        )
    if stored is not None and stored != digest(state):
        raise BirnnError(f"{path} is damaged: its content does not match its checksum.")
    contents.check(state, path)
    return state


def remove_stale(folder: Path) -> None:
    """Remove temp files a killed checkpoint write left behind (call only while holding the run dir)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load_latest(
    folder: Path, check: Callable[[dict, Path], None] | None = None, unverified: bool = False
) -> tuple[dict, Path] | None:
    """The newest valid checkpoint in ``folder`` (``last.pt``, else ``previous.pt``), or None if there is none.

    ``check`` raises BirnnError for a checkpoint its reader cannot use; ``unverified`` as in ``load``. A
    corrupt, damaged or unusable ``last.pt`` falls back to ``previous.pt`` with a warning; if nothing valid is
    left, BirnnError.
    """
    candidates = [p for p in (folder / LAST, folder / PREVIOUS) if p.exists()]
    errors = []
    for path in candidates:
        try:
            state = load(path, unverified)
            if check is not None:
                check(state, path)
        except BirnnError as e:
            errors.append(str(e))
            continue
        if errors:
            log.warning("%s Falling back to %s (step %d).", errors[0], path, state["progress"]["global_step"])
        return state, path
    if errors:
        raise BirnnError(
            " ".join(errors) + f" No valid checkpoint is left in {folder}: "
            "move that run dir aside (or delete its checkpoints/) to start over."
        )
    return None


def load_model_state(model: nn.Module, state_dict: dict, source: Path | str) -> None:
    """``load_state_dict`` with a message naming every missing, unexpected or mis-shaped tensor. A CRF's
    decoding constraints missing from an older checkpoint allow everything (``birnn.models.crf``)."""
    state_dict = check_architecture(model, state_dict, source)
    model.load_state_dict(state_dict)


def check_architecture(model: nn.Module, state_dict: dict, source: Path | str) -> dict:
    """``state_dict`` (with a CRF's missing constraints) if its tensors are ``model``'s, names and shapes; else a
    BirnnError naming each difference. ``model`` may live on the meta device: nothing is allocated."""
    state_dict = with_constraints(model, state_dict)
    own = model.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    problems += [f"{k}: missing in checkpoint" for k in own if k not in state_dict]
    problems += [f"{k}: not in this model" for k in state_dict if k not in own]
    if problems:
        raise BirnnError(
            f"{source} holds a different architecture than the configured model:\n  " + "\n  ".join(problems)
        )
    return state_dict


def non_finite(state_dict: dict) -> str | None:
    """The first floating tensor of ``state_dict`` holding NaN or inf, as ``name (n of m values)``; else None."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return f"{name}: {bad} of {tensor.numel()} values"
    return None
