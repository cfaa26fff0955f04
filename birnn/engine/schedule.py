"""Learning-rate schedules: the ``scheduler`` node is a partial called with the optimizer and the step count.

Stepped once per optimizer step. ``scheduler=none`` (null) keeps the optimizer's lr (the tutorial);
``cosine`` and ``onecycle`` are torch's own schedulers, and any ``_target_`` taking
``(optimizer, total_steps=N, **its keys)`` plugs in the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from birnn.schema.errors import BirnnError, first_line


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.0
) -> LRScheduler:
    """Linear warm-up from lr / warmup_steps to lr over ``warmup_steps`` steps, then cosine decay to
    ``lr * min_lr_ratio`` at ``total_steps`` (torch's LinearLR, then CosineAnnealingLR)."""
    if warmup_steps < 0:
        raise BirnnError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    if not 0 <= min_lr_ratio <= 1:
        raise BirnnError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    decay = {"T_max": max(1, total_steps - warmup_steps), "eta_min": optimizer.param_groups[0]["lr"] * min_lr_ratio}
    if not warmup_steps:
        return CosineAnnealingLR(optimizer, **decay)
    # built in this order: SequentialLR expects each scheduler to see the lr the one before it set
    warmup = LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, CosineAnnealingLR(optimizer, **decay)], milestones=[warmup_steps])


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler | None:
    """The schedule ``cfg`` (the ``scheduler`` node; null: none) names, for a run of ``total_steps`` steps."""
    if cfg is None:
        return None
    try:
        return instantiate(cfg, _partial_=True)(optimizer, total_steps=total_steps)
    except BirnnError:
        raise
    except InstantiationException as e:
        raise BirnnError(f"scheduler._target_={cfg.get('_target_')}: {first_line(e.__cause__ or e)}") from None
    except (TypeError, ValueError) as e:  # torch's own range checks (e.g. OneCycleLR's pct_start)
        raise BirnnError(f"scheduler ({cfg.get('_target_')}): {first_line(e)}") from None
