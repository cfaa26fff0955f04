"""``model.stem=conv``: a learned patch embedding in front of the recurrence (``data.patch``'s fixed reshaping,
learned).

A Conv1d with kernel k and stride s (k >= s: no step is skipped) reads windows of k steps every s steps and gives
``ceil(steps / s)`` steps of ``channels`` features; then a LayerNorm over the channels of each step and a GELU
(the patch embeddings of ViT-style models are normalized the same way). With ``kernel == stride`` it is exactly
a linear map of ``data.patch=k``'s patches (zero-filled last one included).

Why LayerNorm, not BatchNorm: it normalizes each step of each sample on its own, so the padding of a batch, the
batch's make-up and the number of processes (torchrun) never change a sample's result, training and evaluation
compute the same thing, and there are no running statistics to resume.

Lengths: each sample's steps past its length are zeroed and the batch is padded on the right with zeros up to
``(ceil(steps / s) - 1) * s + k`` steps, so output ``t`` reads steps ``t*s .. t*s + k - 1`` of the sample or
zeros, as the sample alone (padded the same way) does; its new length is ``ceil(length / s)`` (every one of
those windows starts at a valid step).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from birnn.models.layers import masked, step_mask
from birnn.schema.errors import check_config

STEMS = ("none", "conv")
MAX_KERNEL = 4096  # far beyond any sensible window: refuses typos


def stem_lengths(lengths: Tensor, stride: int) -> Tensor:
    """Valid steps after the stem: ``ceil(length / stride)``."""
    return (lengths + stride - 1).div(stride, rounding_mode="floor")


class ConvStem(nn.Module):
    """Conv1d(kernel, stride) -> LayerNorm over channels -> GELU on (batch, steps, features) series."""

    def __init__(self, input_size: int, channels: int, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(input_size, channels, kernel, stride)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``x`` (batch, steps, features) -> (batch, ceil(steps / stride), channels) and the new lengths."""
        steps = x.shape[1]
        y = masked(x.transpose(1, 2), step_mask(lengths, steps, x.device))
        out_steps = -(-steps // self.stride)
        y = F.pad(y, (0, (out_steps - 1) * self.stride + self.kernel - steps))
        y = F.gelu(self.norm(self.conv(y).transpose(1, 2)))
        return y, None if lengths is None else stem_lengths(lengths, self.stride)


def check_stem(stem: str, kernel: int, stride: int, channels: int, max_channels: int, per_step: bool) -> None:
    """Raise one BirnnError listing every ``model.stem*`` value RNNClassifier cannot be built with."""
    check_config(
        [
            (stem in STEMS, f"model.stem must be one of {', '.join(STEMS)}; got {stem!r}"),
            (0 < kernel <= MAX_KERNEL, f"model.stem_kernel must be in 1..{MAX_KERNEL}, got {kernel}"),
            (
                0 < stride <= kernel,
                f"model.stem_stride must be in 1..model.stem_kernel ({kernel}): a longer stride skips steps; "
                f"got {stride}",
            ),
            (0 < channels <= max_channels, f"model.stem_channels must be in 1..{max_channels}, got {channels}"),
            (
                stem != "conv" or not per_step or stride == 1,
                f"model.stem=conv with per-step labels needs model.stem_stride=1 (one output per labelled step), "
                f"got {stride}",
            ),
        ]
    )
