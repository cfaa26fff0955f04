"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr after ``step`` steps: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler | None:
    """``none`` (constant lr, the tutorial), ``cosine`` (warm-up + cosine) or ``onecycle`` (torch's OneCycleLR)."""
    if cfg.name == "cosine":
        return LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    if cfg.name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.pct_start)
    return None
