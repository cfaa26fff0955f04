"""One InceptionTime network (Ismail Fawaz et al. 2020), as in the authors' reference code.

Six Inception modules, a residual connection every third: each module is a 1x1 bottleneck convolution (32
filters; skipped on a single input channel) feeding three convolutions (kernels 40/20/10, 32 filters each),
beside a max pooling (3, stride 1) and a 1x1 convolution of the module's input; the four outputs are
concatenated, batch-normalized and passed through a ReLU. Global average pooling and a linear layer classify.
The published ensemble is five such networks trained from different seeds.

With ``lengths``, every convolution reads zeros past each sample's end (as its own ``same`` padding would), the
max pooling reads -inf there (as its own padding would), BatchNorm counts only valid steps and the pooling
averages only them, so a padded batch gives each sample's result alone (in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.models.layers import MaskedBatchNorm1d, masked, mean_over_steps, refuse_per_step, same_conv, step_mask
from birnn.schema.errors import check_config


class InceptionModule(nn.Module):
    """Bottleneck -> parallel convolutions + max pooling branch -> concatenation -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, filters: int, kernel_sizes: Sequence[int], bottleneck: int):
        super().__init__()
        use_bottleneck = bottleneck > 0 and in_channels > 1
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, 1, bias=False) if use_bottleneck else None
        width = bottleneck if use_bottleneck else in_channels
        self.convs = nn.ModuleList(same_conv(width, filters, k, bias=False) for k in kernel_sizes)
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.norm = MaskedBatchNorm1d(filters * (len(kernel_sizes) + 1))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` (batch, channels, steps), zero past each sample's end; the output is too."""
        inner = x if self.bottleneck is None else self.bottleneck(x)  # 1x1, no bias: the padding stays zero
        pooled = masked(F.max_pool1d(masked(x, mask, -torch.inf), 3, stride=1, padding=1), mask)
        y = torch.cat([*(conv(inner) for conv in self.convs), self.pool_conv(pooled)], dim=1)
        return masked(torch.relu(self.norm(y, mask)), mask)


class Shortcut(nn.Module):
    """The residual connection: a 1x1 convolution and BatchNorm of the block's input, added, then a ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        return masked(torch.relu(self.norm(self.conv(x), mask) + y), mask)


class InceptionTime(nn.Module):
    """One InceptionTime network over a (batch, steps, channels) series; ``forward(x, lengths=None)``."""

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        depth: int = 6,
        filters: int = 32,
        kernel_sizes: Sequence[int] = (40, 20, 10),
        bottleneck: int = 32,
        residual: bool = True,
        per_step: bool = False,
    ):
        super().__init__()
        refuse_per_step("inception_time", per_step)
        kernel_sizes = list(kernel_sizes)
        check_config(
            [
                (depth > 0, f"model.depth must be > 0, got {depth}"),
                (filters > 0, f"model.filters must be > 0, got {filters}"),
                (
                    len(kernel_sizes) > 0 and min(kernel_sizes) > 0,
                    f"model.kernel_sizes must be a non-empty list of sizes > 0, got {kernel_sizes}",
                ),
                (bottleneck >= 0, f"model.bottleneck must be >= 0 (0: none), got {bottleneck}"),
            ]
        )
        width = filters * (len(kernel_sizes) + 1)
        self.blocks = nn.ModuleList(
            InceptionModule(input_size if d == 0 else width, filters, kernel_sizes, bottleneck) for d in range(depth)
        )
        # a shortcut after modules 3, 6, ...: from the input of the three modules it spans
        self.shortcuts = nn.ModuleList(
            Shortcut(input_size if d == 2 else width, width) for d in range(depth) if residual and d % 3 == 2
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits for ``x`` (batch, steps, channels), each sample's first ``lengths[i]`` steps if given."""
        if lengths is not None and not len(lengths):
            lengths = None  # an empty batch (a process's share of DDP's last batch)
        mask = step_mask(lengths, x.shape[1], x.device)
        y = residual = masked(x.transpose(1, 2), mask)
        shortcuts = iter(self.shortcuts)
        for d, module in enumerate(self.blocks):
            y = module(y, mask)
            if self.shortcuts and d % 3 == 2:
                y = residual = next(shortcuts)(residual, y, mask)
        return self.fc(mean_over_steps(y, mask))
