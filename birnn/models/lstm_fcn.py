"""LSTM-FCN (Karim et al. 2017) and, on multivariate input, MLSTM-FCN's squeeze-and-excite blocks (Karim et al. 2019).

Two branches read the same series: an LSTM over its steps (its final hidden state, dropout) and a fully
convolutional network (three Conv1d-BatchNorm-ReLU blocks, 128/256/128 filters, kernels 8/5/3, global average
pooling); a linear layer classifies their concatenation. With ``lengths`` the LSTM is packed, every convolution
reads zeros past each sample's end (as its own ``same`` padding would), BatchNorm counts only valid steps and
the pooling averages only them, so a padded batch gives each sample's result alone (in eval mode).

One deviation from the paper: the LSTM reads the time steps (batch, steps, channels), not the "dimension
shuffled" series (one step per channel, the whole series as its features), which would fix the series length
in the weights and rule out variable lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from birnn.models.layers import MaskedBatchNorm1d, masked, mean_over_steps, pack, refuse_per_step, same_conv, step_mask
from birnn.schema.errors import check_config


class SqueezeExcite(nn.Module):
    """Channel weights from the (masked) mean over steps: Linear-ReLU-Linear-sigmoid (Hu et al. 2018), no biases."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, max(1, channels // reduction), bias=False),
            nn.ReLU(),
            nn.Linear(max(1, channels // reduction), channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x * self.gate(mean_over_steps(x, mask)).unsqueeze(2)


class ConvBlock(nn.Module):
    """Conv1d (``same`` padding, He-uniform weights) -> BatchNorm -> ReLU, zero past each sample's end.

    The convolution has no bias (the published Keras code's is cancelled by the BatchNorm after it: its gradient
    is rounding noise, which Adam would turn into steps of the full learning rate)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = same_conv(in_channels, out_channels, kernel_size, bias=False)
        nn.init.kaiming_uniform_(self.conv[1].weight, nonlinearity="relu")  # Keras' he_uniform, as published
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return masked(torch.relu(self.norm(self.conv(x), mask)), mask)


class LSTMFCN(nn.Module):
    """LSTM-FCN / MLSTM-FCN classifier of a (batch, steps, channels) series; ``forward(x, lengths=None)``."""

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden_size: int = 8,
        dropout: float = 0.8,
        filters: Sequence[int] = (128, 256, 128),
        kernel_sizes: Sequence[int] = (8, 5, 3),
        squeeze_excite: bool | None = None,
        reduction: int = 16,
        per_step: bool = False,
    ):
        super().__init__()
        refuse_per_step("lstm_fcn", per_step)
        filters, kernel_sizes = list(filters), list(kernel_sizes)
        check_options(hidden_size, dropout, filters, kernel_sizes, reduction)
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        widths = [input_size, *filters]
        self.blocks = nn.ModuleList(ConvBlock(i, o, k) for i, o, k in zip(widths, filters, kernel_sizes))
        excite = input_size > 1 if squeeze_excite is None else squeeze_excite
        # MLSTM-FCN: after every block but the last
        self.excite = nn.ModuleList(SqueezeExcite(f, reduction) for f in filters[:-1]) if excite else None
        self.fc = nn.Linear(hidden_size + filters[-1], num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits for ``x`` (batch, steps, channels), each sample's first ``lengths[i]`` steps if given."""
        if lengths is not None and not len(lengths):
            lengths = None  # an empty batch (a process's share of DDP's last batch)
        if lengths is None:
            _, (h_n, _) = self.lstm(x)
        else:
            _, (h_n, _) = self.lstm(pack(x, lengths))
        mask = step_mask(lengths, x.shape[1], x.device)
        y = masked(x.transpose(1, 2), mask)
        for i, block in enumerate(self.blocks):
            y = block(y, mask)
            if self.excite is not None and i < len(self.excite):
                y = self.excite[i](y, mask)
        return self.fc(torch.cat([self.dropout(h_n[-1]), mean_over_steps(y, mask)], dim=1))


def check_options(
    hidden_size: int, dropout: float, filters: list[int], kernel_sizes: list[int], reduction: int
) -> None:
    """Raise one BirnnError listing every ``model.*`` value LSTMFCN cannot be built with."""
    check_config(
        [
            (hidden_size > 0, f"model.hidden_size must be > 0, got {hidden_size}"),
            (0 <= dropout < 1, f"model.dropout must be in [0, 1), got {dropout}"),
            (
                len(filters) > 0 and min(filters) > 0,
                f"model.filters must be a non-empty list of sizes > 0, got {filters}",
            ),
            (
                len(kernel_sizes) == len(filters) and min(kernel_sizes, default=0) > 0,
                f"model.kernel_sizes must give one size > 0 per filter, got {kernel_sizes}",
            ),
            (reduction > 0, f"model.reduction must be > 0, got {reduction}"),
        ]
    )
