"""Inputs that stay on disk: a memory-mapped ``.npy`` split read batch by batch (``data=packed``).

A ``Mapped`` stands where a split's input tensor stands in ``Splits``: ``len``, ``shape``, ``device``, and
indexing (``x[idx]``, ``x[i:j]``) gives a float32 tensor on ``device``, standardized and patched exactly as
``load_data`` does to a whole in-memory split (elementwise, so a gathered batch equals the same rows of the
in-memory split bit for bit). A 2-D integer source is token IDs ``(N, steps)``: rows come back as int64 IDs,
never cast to float, standardized or patched. Views (``subset``, ``standardized``, ``patched``, ``to``) copy nothing.
Rows are read with positional reads (``preadv``), not through the map: a fault on a memory map maps whole
page-cache folios into the process (100 random 16 KB rows added 120 MB of resident memory here), a read
copies only the rows. The file stays in the operating system's page cache either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from birnn.data import normalize, patches
from birnn.schema.errors import BirnnError
from birnn.system.files import open_regular

CHUNK_BYTES = 64 * 2**20  # rows per streamed chunk (statistics, packing) hold about this many bytes


class NpyMap:
    """One ``.npy`` file, open: its array memory-mapped read-only (``array``, for shapes and small arrays) and
    positional reads of row sets (``rows``), which keep the data out of this process's resident memory."""

    def __init__(self, path: Path):
        try:
            self.file = open_regular(path, None)  # any size: rows are read on demand
            version = np.lib.format.read_magic(self.file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(self.file)
            if dtype.hasobject or dtype.kind not in "biuf":
                raise BirnnError(f"{path} holds {dtype} values; a pack holds numbers only")
            self.offset = self.file.tell()
            size = path.stat().st_size
            need = self.offset + int(np.prod(shape)) * dtype.itemsize
            if fortran or size != need:
                raise ValueError(f"{size} bytes where its header ({shape}, {dtype}) needs {need}")
            self.array = np.load(path, mmap_mode="r") if size > self.offset else np.zeros(shape, dtype)
        except (OSError, ValueError) as e:
            raise BirnnError(f"{path} is not a complete .npy file: {e}") from None

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (ascending) read with ``preadv``, runs of consecutive rows in one call each."""
        out = np.empty((len(index), *self.array.shape[1:]), self.array.dtype)
        flat = out.reshape(len(index), -1).view(np.uint8)
        row_bytes = flat.shape[1]
        starts = np.flatnonzero(np.diff(index, prepend=-2) != 1)  # where runs of consecutive rows begin
        for begin, end in zip(starts, [*starts[1:], len(index)]):
            view = memoryview(flat[begin:end]).cast("B")
            offset = self.offset + int(index[begin]) * row_bytes
            while len(view):
                done = os.preadv(self.file.fileno(), [view], offset)
                if not done:
                    raise BirnnError(f"{self.file.name} ended early (truncated while open?)")
                view, offset = view[done:], offset + done
        return out


@dataclass(frozen=True)
class Mapped:
    """Rows ``rows`` (None: all) of a memory-mapped ``(N, steps, features)`` array, read as float32 (or of token IDs
    ``(N, steps)``, read as int64).

    ``lengths``: the raw valid steps of each of these rows (CPU), for the padding masks of standardization and
    patching; ``series``: each row z-normalized on its own first (``data.normalize_series``); ``stats``:
    standardization statistics of all the source's rows (a pack's manifest, of raw rows), used by
    ``fit`` while no rows are left out; ``normalization`` and ``patch`` as in ``Splits``; ``device``: where
    gathered batches go; ``vocab_size``: token IDs outside ``0..vocab_size-1`` are refused batch by batch;
    ``characters``: the source holds each token's ID then its character IDs ``(N, steps, 1 + chars)``
    (``model.char_encoder``), character IDs outside ``0..characters-1`` refused alike.
    """

    source: NpyMap
    rows: np.ndarray | None = None
    lengths: Tensor | None = None
    stats: dict | None = None
    normalization: dict | None = None
    patch: int = 1
    device: torch.device = torch.device("cpu")
    vocab_size: int | None = None
    series: bool = False  # data.normalize_series: each row z-normalized on its own, before ``normalization``
    characters: int | None = None

    def __len__(self) -> int:
        return len(self.source.array) if self.rows is None else len(self.rows)

    @property
    def tokens(self) -> bool:
        """Token IDs ``(N, steps)`` (or with characters) rather than float features ``(N, steps, features)``."""
        return self.source.array.ndim == 2 or self.characters is not None

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return tuple(self.source.array.shape[1:])

    @property
    def shape(self) -> torch.Size:
        if self.tokens:
            return torch.Size((len(self), *self.raw_shape))
        steps, features = self.raw_shape
        return torch.Size((len(self), -(-steps // self.patch), self.patch * features))

    @property
    def ndim(self) -> int:
        return self.source.array.ndim

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64 if self.tokens else torch.float32

    def subset(self, index: Tensor | slice) -> Mapped:
        """A view of some of these rows (positions ``index``), nothing read."""
        positions = np.arange(len(self))[index] if isinstance(index, slice) else index.cpu().numpy()
        rows = positions if self.rows is None else self.rows[positions]
        lengths = None if self.lengths is None else self.lengths[torch.from_numpy(positions)]
        return replace(self, rows=rows, lengths=lengths)

    def fit(self) -> dict:
        """Standardization statistics of these rows: the manifest's for all rows, else one streaming pass."""
        if self.rows is None and self.stats is not None and not self.series:
            return self.stats
        moments = normalize.Moments()
        for x, lengths in self.raw_chunks():
            moments.add(normalize.per_series_(x, lengths) if self.series else x, lengths)
        return moments.stats()

    def series_normalized(self) -> Mapped:
        return replace(self, series=True)

    def standardized(self, stats: dict) -> Mapped:
        return replace(self, normalization=stats)

    def patched(self, k: int) -> Mapped:
        return replace(self, patch=k)

    def to(self, device: torch.device) -> Mapped:
        return replace(self, device=device)

    def __getitem__(self, index: Tensor | slice) -> Tensor:
        """Rows at positions ``index`` as a float32 tensor on ``device``, standardized and patched (token IDs: int64,
        as stored)."""
        view = self.subset(index)
        rows = np.arange(len(self.source.array)) if view.rows is None else view.rows
        order = np.argsort(rows, kind="stable")  # read the file forwards, then put the rows back in batch order
        raw = np.empty((len(rows), *self.raw_shape), self.source.array.dtype)
        raw[order] = self.source.rows(rows[order])
        if self.tokens:
            self._check_ids(raw, rows)
            return torch.from_numpy(raw.astype(np.int64, copy=False)).to(self.device)
        x = torch.from_numpy(raw.astype(np.float32, copy=False))
        if self.series:
            x = normalize.per_series_(x, view.lengths)  # raw is this batch's own buffer
        if self.normalization is not None:
            x = normalize.apply(x, self.normalization, view.lengths)
        return patches.patch(x, self.patch, view.lengths).to(self.device)

    def _check_ids(self, raw: np.ndarray, rows: np.ndarray) -> None:
        """Token IDs ``raw`` of the source's rows ``rows`` lie in ``0..vocab_size-1``, or one error line."""
        if self.vocab_size is None:
            return
        ids, chars = (raw, None) if self.characters is None else (raw[..., 0], raw[..., 1:])
        for values, high, what in ((ids, self.vocab_size, "token"), (chars, self.characters, "character")):
            if values is None:
                continue
            bad = np.flatnonzero(((values < 0) | (values >= high)).reshape(len(values), -1).any(1))
            if len(bad):
                raise BirnnError(
                    f"{self.source.file.name} row {int(rows[bad[0]])} holds a {what} ID outside 0..{high - 1} "
                    "(changed after packing? birnn-pack --verify checks every file)"
                )

    def chunks(self) -> list[slice]:
        """Consecutive position ranges of about ``CHUNK_BYTES`` each, covering every row."""
        return normalize.row_ranges(len(self), int(np.prod(self.raw_shape)) * 4, CHUNK_BYTES)

    def raw_chunks(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """``(x, lengths)`` float32 CPU chunks of the raw rows (before standardization and patching)."""
        raw = replace(self, normalization=None, series=False, patch=1, device=torch.device("cpu"))
        for part in self.chunks():
            yield raw[part], None if self.lengths is None else self.lengths[part]
