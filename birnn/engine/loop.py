"""One training step and one evaluation pass. Neither syncs with the host: results stay on the device."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.data.pipeline import IGNORE, sequential_batches
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


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model behind a DistributedDataParallel wrapper (or itself)."""
    return getattr(model, "module", model)


def loss_sum(model: nn.Module, logits: Tensor, y: Tensor, lengths: Tensor | None) -> Tensor:
    """Summed loss over the labels of a batch: cross-entropy per sample or per valid step (``IGNORE`` skipped),
    or the negative log-likelihood of the model's CRF (``model.crf``) for per-step labels."""
    if y.ndim == 1:
        return F.cross_entropy(logits, y, reduction="sum")
    crf = getattr(_unwrapped(model), "crf", None)
    if crf is not None:
        return crf.nll(logits, y, _full(lengths, y)).sum()
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")


def predicted(model: nn.Module, logits: Tensor, lengths: Tensor | None, per_step: bool) -> Tensor:
    """The predicted class per sample, or per step (``IGNORE`` beyond a length; the CRF's Viterbi path if any)."""
    if not per_step:
        return logits.argmax(1)
    crf = getattr(_unwrapped(model), "crf", None)
    full = _full(lengths, logits[..., 0])
    if crf is not None:
        return crf.decode(logits, full)
    steps = torch.arange(logits.shape[1], device=logits.device)
    return logits.argmax(-1).masked_fill(steps >= full.to(logits.device).unsqueeze(1), IGNORE)


def _full(lengths: Tensor | None, y: Tensor) -> Tensor:
    """``lengths``, or every step of ``y`` (batch, steps) when None."""
    return lengths if lengths is not None else torch.full((len(y),), y.shape[1], dtype=torch.int64)


@dataclass
class Stepper:
    """Everything one optimizer step needs besides the batch.

    ``world_size`` processes each hold a share of every global batch; each weights its summed loss by
    ``world_size / global batch size``, so DDP's gradient average is the mean over the whole global batch
    (the single-process math, the last partial batch included).
    """

    model: nn.Module
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
        per_step = y.ndim == 2
        if self.world_size == 1 and batch_size in (None, len(y)) and not per_step:
            loss = F.cross_entropy(logits, y)
            total = loss.detach() * len(y)
        else:
            total = loss_sum(self.model, logits, y, lengths)
            count = batch_size if batch_size is not None else int((y != IGNORE).sum())
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
        return total, correct(predicted(self.model, logits.detach(), lengths, per_step), y)


@torch.inference_mode()
def loss_and_predictions(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "32",
    lengths: Tensor | None = None,
    poll: Callable[[], None] = lambda: None,
) -> tuple[Tensor, Tensor]:
    """Summed loss (``loss_sum``) and the predicted classes over ``(x, y)``, in batches; both stay on the device.
    ``poll`` runs before each batch: it may raise to give up the pass (a stop signal)."""
    model.eval()
    total = torch.zeros((), device=x.device)
    predictions = [torch.zeros((0, *y.shape[1:]), dtype=torch.int64, device=x.device)]
    for xb, yb, lb in sequential_batches(x, y, batch_size, lengths):
        poll()
        logits = forward(model, xb, device, precision, lb)
        total += loss_sum(model, logits, yb, lb)
        predictions.append(predicted(model, logits, lb, y.ndim == 2))
    return total, torch.cat(predictions)


def eval_pass(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "32",
    lengths: Tensor | None = None,
) -> EvalResult:
    """Mean loss, accuracy and predictions over ``(x, y)`` (per label: per valid step for per-step labels)."""
    total, pred = loss_and_predictions(model, x, y, batch_size, device, precision, lengths)
    n = label_count(y)
    return EvalResult(loss=total.item() / n, accuracy=correct(pred, y).item() / n, predictions=pred)


def correct(predictions: Tensor, y: Tensor) -> Tensor:
    """The number of correct predictions (a device tensor); padded steps (``IGNORE``) do not count."""
    return ((predictions == y) & (y != IGNORE)).sum()


def label_count(y: Tensor) -> int:
    """The labels in ``y``: one per sample, or one per valid step (not ``IGNORE``) of per-step labels."""
    return int((y != IGNORE).sum()) if y.ndim == 2 else len(y)
