"""One training step and one evaluation pass. Neither syncs with the host: results stay on the device."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from birnn.data.pipeline import sequential_batches
from birnn.data.targets import Target
from birnn.records.scores import EvalResult


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed-precision context for ``trainer.precision`` (``32`` runs plain fp32)."""
    if precision == "32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def forward(model: nn.Module, x: Tensor, device: torch.device, precision: str, lengths: Tensor | None = None) -> Tensor:
    """fp32 logits through ``model``'s own ``__call__`` (so a DDP wrapper sees every path), under autocast for
    mixed precision; the classifier keeps its head in fp32 itself. ``lengths``: valid steps per sample."""
    with autocast(device, precision):
        return model(x) if lengths is None else model(x, lengths=lengths)


@dataclass
class Stepper:
    """Everything one optimizer step needs besides the batch.

    ``world_size`` processes each hold a share of every global batch; each weights its summed loss by
    ``world_size / global batch size``, so DDP's gradient average is the mean over the whole global batch
    (the single-process math, the last partial batch included). ``target``: the kind of target (its loss and
    predictions).
    """

    model: nn.Module
    target: Target
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str = "32"
    grad_clip: float | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    world_size: int = 1

    def step(
        self, x: Tensor, y: Tensor, lengths: Tensor | None = None, batch_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Forward, backward, update on this process's share ``(x, y)`` of a global batch of ``batch_size``
        labels (default: all of ``y``'s; per-step labels: the global batch's valid steps). Returns the share's
        summed loss and number correct (device tensors)."""
        self.model.train()
        logits = forward(self.model, x, self.device, self.precision, lengths)
        whole = self.world_size == 1 and batch_size in (None, len(y))
        loss = self.target.batch_mean(logits, y) if whole else None
        if loss is not None:
            total = loss.detach() * len(y)
        else:
            total = self.target.loss_sum(self.model, logits, y, lengths)
            count = batch_size if batch_size is not None else self.target.count(y)
            loss = total * (self.world_size / max(count, 1))
            total = total.detach()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return total, self.target.correct(self.target.predict(self.model, logits.detach(), lengths), y)


@torch.inference_mode()
def loss_and_predictions(
    model: nn.Module,
    target: Target,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "32",
    lengths: Tensor | None = None,
    poll: Callable[[], None] = lambda: None,
) -> tuple[Tensor, Tensor]:
    """Summed loss and the predictions of ``target`` (its kind) over ``(x, y)``, in batches; both stay on the
    device. ``poll`` runs before each batch: it may raise to give up the pass (a stop signal)."""
    model.eval()
    total = torch.zeros((), device=x.device)
    predictions = [torch.zeros((0, *y.shape[1:]), dtype=y.dtype, device=x.device)]
    for xb, yb, lb in sequential_batches(x, y, batch_size, lengths):
        poll()
        logits = forward(model, xb, device, precision, lb)
        total += target.loss_sum(model, logits, yb, lb)
        predictions.append(target.predict(model, logits, lb))
    return total, torch.cat(predictions)


def eval_pass(
    model: nn.Module,
    target: Target,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "32",
    lengths: Tensor | None = None,
) -> EvalResult:
    """Mean loss, accuracy and predictions over ``(x, y)`` (per scored target: per valid step for per-step labels)."""
    total, pred = loss_and_predictions(model, target, x, y, batch_size, device, precision, lengths)
    n = target.count(y)
    return EvalResult(loss=total.item() / n, accuracy=target.correct(pred, y).item() / n, predictions=pred)
