"""Patches (``data.patch=k``): read k consecutive steps of a series as one step of k x channels features.

The tutorial never feeds its LSTM 784 single pixels: it reads an image as 28 rows of 28 pixels, i.e. a pixel
series with k = 28. ``patch`` does the same for any sequence: ``(N, steps, C)`` becomes
``(N, ceil(steps / k), k * C)``, each new step holding k old ones in order (old step ``j`` of a patch fills
features ``j * C .. (j + 1) * C - 1``). A series that k does not divide gets a last patch filled with zeros
(the channel means, once ``data.normalize`` has standardized it); variable-length series keep
``ceil(length / k)`` steps and their padding is zeroed first, so a sample patched in a padded batch equals
the sample patched alone. ``load_data`` patches after standardization; checkpoints record k in their data spec
(``birnn.data.pipeline.spec``), and evaluate, predict and export (``Patched``) apply it to raw inputs.

``data.patch=auto`` picks k from the training split alone (``auto_size``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.schema.errors import BirnnError

AUTO = "auto"
# data.patch=auto: series up to this many steps are read one step at a time (a BiLSTM handles them well:
# JapaneseVowels' 7-26 steps, ItalyPowerDemand's 24); longer ones are read as about sqrt(steps) patches of
# sqrt(steps) steps, the tutorial's 28 x 28 for a 784-pixel series.
AUTO_MAX_PLAIN_STEPS = 64


def auto_size(train_steps: int) -> int:
    """The patch size ``data.patch=auto`` picks for a training split whose longest series has ``train_steps``."""
    return 1 if train_steps <= AUTO_MAX_PLAIN_STEPS else round(math.sqrt(train_steps))


def resolve(patch: int | str, train_x: Tensor, train_lengths: Tensor | None) -> int:
    """``data.patch`` as a number: ``auto`` becomes ``auto_size`` of the training split's longest series; a
    patch longer than that series is refused (every series would be one step, mostly zeros)."""
    longest = int(train_lengths.max()) if train_lengths is not None else train_x.shape[1]
    if patch == AUTO:
        return auto_size(longest)
    if int(patch) > longest:
        raise BirnnError(
            f"data.patch={patch} is longer than the longest training series ({longest} steps): each series would "
            f"be read as one step, mostly zeros. Use data.patch between 1 and {longest}, or data.patch=auto"
        )
    return int(patch)


def patch_lengths(lengths: Tensor, k: int) -> Tensor:
    """Valid steps after patching: ``ceil(length / k)``."""
    return torch.div(lengths + k - 1, k, rounding_mode="floor")


def patch(x: Tensor, k: int, lengths: Tensor | None = None) -> Tensor:
    """``x`` (N, steps, C) as (N, ceil(steps / k), k * C); steps beyond ``lengths`` are zeroed first."""
    if k == 1:
        return x
    if lengths is not None:
        valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]
        x = x.masked_fill(~valid.unsqueeze(-1), 0)
    n, steps, channels = x.shape
    x = F.pad(x, (0, 0, 0, -steps % k))
    return x.reshape(n, -1, k * channels)


class Patched(nn.Module):
    """``model`` behind the patching it was trained with, so the whole takes raw series (export)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        return self.model(patch(x, self.k))
