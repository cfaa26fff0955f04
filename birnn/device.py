"""Pick the training device and set the process-wide torch switches that go with it."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from birnn.errors import BirnnError


def setup_device(cfg: DictConfig, precision: str = "32") -> torch.device:
    """``auto`` is cuda, else mps, else cpu; an explicit choice that is not available is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    kind = cfg.type if cfg.type != "auto" else next(k for k in ("cuda", "mps", "cpu") if available[k])
    if not available[kind]:
        raise BirnnError(f"device={kind} was requested but {kind.upper()} is not available on this machine "
                         f"(torch {torch.__version__}). Use device=auto or device=cpu.")
    if precision == "16" and kind != "cuda":
        raise BirnnError(f"trainer.precision=16 needs CUDA (running on {kind}); use trainer.precision=bf16 or 32.")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if kind == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    return torch.device(kind)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (before reading a wall clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
