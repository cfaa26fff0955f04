"""Pick the training device and set the process-wide torch switches that go with it."""

from __future__ import annotations

import functools
import logging

import torch
from omegaconf import DictConfig

from birnn.schema.errors import BirnnError
from birnn.system import threads
from birnn.system.allocator import tune_allocator

log = logging.getLogger(__name__)


def setup_device(cfg: DictConfig, precision: str = "32") -> torch.device:
    """``auto`` is cuda, else mps, else cpu; an explicit choice that is not available is an error.

    On the CPU, with ``tune_allocator``, glibc's allocator is tuned first (``birnn.system.allocator``): call this
    before loading data so the whole run's allocations benefit.
    """
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    kind = cfg.type if cfg.type != "auto" else next(k for k in ("cuda", "mps", "cpu") if available[k])
    if not available[kind]:
        raise BirnnError(
            f"device={kind} was requested but {kind.upper()} is not available on this machine "
            f"(torch {torch.__version__}). Use device=auto or device=cpu."
        )
    if precision == "16" and kind != "cuda":
        raise BirnnError(f"trainer.precision=16 needs CUDA (running on {kind}); use trainer.precision=bf16 or 32.")
    if kind == "cpu" and cfg.tune_allocator:
        tune_allocator()
    log.info(threads.setup(cfg.num_threads))
    if kind == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    return torch.device(kind)


@functools.cache
def cpu_bf16_recurrence() -> bool:
    """Whether this CPU's oneDNN runs LSTM/GRU layers under bf16 autocast (CPUs without bf16 support refuse)."""
    x = torch.zeros(1, 2, 4)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for module in (torch.nn.LSTM(4, 4, batch_first=True), torch.nn.GRU(4, 4, batch_first=True)):
                module(x)
    except RuntimeError:
        return False
    return True


def effective_precision(precision: str, device: torch.device) -> str:
    """``precision``, except bf16 on a CPU that cannot run recurrent layers in bf16: 32, with a warning."""
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_recurrence():
        log.warning(
            "trainer.precision=bf16: this CPU's oneDNN has no bf16 LSTM/GRU kernels; training in fp32 "
            "instead (set trainer.precision=32 to silence this)."
        )
        return "32"
    return precision


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (before reading a wall clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
