"""Building blocks the convolutional models share: step masks, masked pooling and a masked, synced BatchNorm."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from birnn.schema.errors import BirnnError


def refuse_per_step(model: str, per_step: bool) -> None:
    """A model that reads a whole series into one output (LSTM-FCN, InceptionTime) cannot give one per step."""
    if per_step:
        raise BirnnError(
            f"model={model} gives one output per series, not one per step: task.per_step=true (or per-step labels) "
            "needs model=bilstm or model=bigru"
        )


def pack(x: Tensor, lengths: Tensor) -> PackedSequence:
    """A batch-first ``x`` packed by ``lengths`` (any order), so a recurrent module never reads the padding."""
    return pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)


def step_mask(lengths: Tensor | None, steps: int, device: torch.device) -> Tensor | None:
    """``(batch, 1, steps)`` booleans, true at each sample's valid steps; None for a fixed-length batch."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]).unsqueeze(1)


def masked(x: Tensor, mask: Tensor | None, fill: float = 0.0) -> Tensor:
    """``x`` (batch, channels, steps) with ``fill`` at the padding (a convolution then reads zeros there, as
    its own ``same`` padding of a sample alone would)."""
    return x if mask is None else x.masked_fill(~mask, fill)


def mean_over_steps(x: Tensor, mask: Tensor | None) -> Tensor:
    """Global average pooling of ``x`` (batch, channels, steps) over each sample's valid steps."""
    if mask is None:
        return x.mean(dim=2)
    return masked(x, mask).sum(dim=2) / mask.sum(dim=2).to(x.dtype)


def same_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Sequential:
    """A Conv1d whose output has its input's length, padded with zeros as Keras' ``same`` does: (k - 1) // 2
    before, k // 2 after (an even kernel too, without torch's warning and copy for ``padding="same"``)."""
    return nn.Sequential(
        nn.ConstantPad1d(((kernel_size - 1) // 2, kernel_size // 2), 0.0),
        nn.Conv1d(in_channels, out_channels, kernel_size, bias=bias),
    )


def _summed(tensor: Tensor) -> Tensor:
    """``tensor`` summed over every process of a distributed run (differentiable), or itself alone."""
    if torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        return all_reduce(tensor)
    return tensor


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over (batch, channels, steps) whose training statistics count only the valid steps
    and every process's share of the global batch.

    So zero padding never shifts the statistics, and ``torchrun`` with N processes normalizes each batch as
    one process does (like ``SyncBatchNorm``, on any device). Evaluation uses the running statistics.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        x = x.float()  # statistics in fp32, as BatchNorm does under autocast
        weight = (x.new_ones(1, 1, 1) if mask is None else mask.to(x.dtype)).expand(x.shape[0], 1, x.shape[2])
        count = _summed(weight.sum().reshape(1))
        mean = _summed((x * weight).sum(dim=(0, 2))) / count
        centered = x - mean[None, :, None]
        var = _summed((centered.square() * weight).sum(dim=(0, 2))) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centered * scale[None, :, None] + self.bias[None, :, None]
