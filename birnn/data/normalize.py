"""Per-feature standardization (``data.normalize``): statistics from the training split, applied anywhere; and
per-series z-normalization (``data.normalize_series``), applied before it.

Statistics are ``{"mean": [...], "std": [...]}``, one float per feature. ``load_data`` fits them on the
training split after the validation hold-out and records them in ``Splits.normalization``; checkpoints
store them, and ``evaluate``, ``predict`` and ``export`` apply the stored ones to raw inputs. For
variable-length data (zero-padded, with per-sample lengths) only the valid steps count, and padded steps
stay exactly 0.

Per-series z-normalization (``per_series``) scales each series by its own mean and (population) std per channel over
its valid steps, as the UCR archive, aeon, sktime and tsai do; it needs no statistics, so it is recorded in a
checkpoint as a flag (the data spec's ``normalize_series``). Padding stays exactly 0; a series channel whose std is
below ``MIN_STD`` is only centred (a constant one becomes exactly 0). Missing values are the loader's: ``data=uea``
fills them with their series' own mean in that channel, so they are 0 after this step (``birnn.data.uea``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# A feature whose training std is below this floor (constant, e.g. an always-black pixel) keeps scale 1
# and is only centred, as scikit-learn's StandardScaler does: dividing by ~0 would blow up any other value.
MIN_STD = 1e-6
CHUNK_BYTES = 4 * 2**20  # statistics and in-place moves handle this many bytes of inputs at a time


def _valid(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """(N, steps, 1) mask of the steps within each sample's length, or None for fixed-length data."""
    if lengths is None:
        return None
    return (torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]).unsqueeze(-1)


def fit(x: Tensor, lengths: Tensor | None = None) -> dict:
    """Per-feature mean and (population) std of ``x`` (N, steps, features) over its valid steps (``Moments``)."""
    moments = Moments()
    moments.add(x, lengths)
    return moments.stats()


def chunks(x: Tensor) -> list[slice]:
    """Consecutive row ranges of ``x`` of about ``CHUNK_BYTES`` each."""
    return row_ranges(len(x), x[0].numel() * x.element_size() if len(x) else 1, CHUNK_BYTES)


def row_ranges(rows: int, row_bytes: int, chunk_bytes: int) -> list[slice]:
    """Consecutive ranges covering ``rows`` rows of ``row_bytes`` each, about ``chunk_bytes`` per range."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class Moments:
    """Per-feature count, mean and squared deviations of valid steps, merged chunk by chunk in float64 (Chan et
    al.'s pairwise update): ``fit`` in one streaming pass, memory bounded by a chunk."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: Tensor, lengths: Tensor | None = None) -> None:
        """Count the valid steps of ``x`` (N, steps, features), ``CHUNK_BYTES`` of it at a time (float64 copies
        of a chunk, not of ``x``)."""
        for rows in chunks(x):
            self._add(x[rows], None if lengths is None else lengths[rows])

    def _add(self, x: Tensor, lengths: Tensor | None) -> None:
        mask = _valid(x, lengths)
        values = (x.reshape(-1, x.shape[-1]) if mask is None else x[mask.squeeze(-1)]).double()
        n = len(values)
        if not n:
            return
        mean = values.mean(0)
        m2 = ((values - mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def stats(self) -> dict | None:
        """``fit``'s statistics of everything added (None when nothing was)."""
        if self.mean is None:
            return None
        std = (self.m2 / self.count).sqrt()
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        return {"mean": self.mean.tolist(), "std": std.tolist()}


def apply(x: Tensor, stats: dict, lengths: Tensor | None = None) -> Tensor:
    """``(x - mean) / std`` per feature; steps beyond ``lengths`` (padding) are set to exactly 0."""
    return apply_(x.clone(), stats, lengths)


def apply_(x: Tensor, stats: dict, lengths: Tensor | None = None) -> Tensor:
    """``apply`` in place (``load_data``: no second copy of a split); the same values bit for bit."""
    mean = torch.tensor(stats["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(stats["std"], dtype=x.dtype, device=x.device)
    x.sub_(mean).div_(std)
    mask = _valid(x, lengths)
    return x if mask is None else x.masked_fill_(~mask, 0)


def per_series(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Each series of ``x`` (N, steps, features) by its own per-channel mean and std over its valid steps."""
    return per_series_(x.clone(), lengths)


def per_series_(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``per_series`` in place, ``CHUNK_BYTES`` of ``x`` at a time (float64 statistics of a chunk)."""
    for rows in chunks(x) if len(x) else []:
        part = x[rows].double()
        mask = _valid(part, None if lengths is None else lengths[rows])
        if mask is None:
            mean = part.mean(1, keepdim=True)
            std = (part - mean).pow(2).mean(1, keepdim=True).sqrt()
        else:
            weight = mask.double()
            count = weight.sum(1, keepdim=True).clamp_min(1)
            mean = (part * weight).sum(1, keepdim=True) / count
            std = ((part - mean).pow(2) * weight).sum(1, keepdim=True).div(count).sqrt()
        scaled = (part - mean) / torch.where(std < MIN_STD, torch.ones_like(std), std)
        x[rows] = (scaled if mask is None else scaled.masked_fill(~mask, 0)).to(x.dtype)
    return x


class SeriesStandardized(nn.Module):
    """``model`` behind per-series z-normalization of fixed-length inputs (export): ``per_series`` in the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        wide = x.double()
        mean = wide.mean(1, keepdim=True)
        std = (wide - mean).pow(2).mean(1, keepdim=True).sqrt()
        scaled = (wide - mean) / torch.where(std < MIN_STD, torch.ones_like(std), std)
        return self.model(scaled.to(x.dtype))


class Standardized(nn.Module):
    """``model`` behind the standardization it was trained with, so the whole takes raw inputs (export)."""

    def __init__(self, model: nn.Module, stats: dict):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(stats["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stats["std"], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)
