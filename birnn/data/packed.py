"""Packed datasets (``birnn-pack``, ``data=packed``): one ``.npy`` file per split and array, and a manifest.

A pack directory holds ``<split>_x.npy`` (inputs ``(N, steps, features)``), ``<split>_y.npy`` (int64 labels)
and, for variable-length series, ``<split>_lengths.npy`` (int64 valid steps), for ``train``, ``test`` and
optionally ``val``; and ``manifest.json``, written last and atomically: shapes, dtypes, byte sizes and a
SHA-256 per file, the classes, the kind, and the training split's standardization statistics. No manifest
means the packing did not finish: such a directory is refused. Training reads the inputs through memory maps
(``birnn.data.mapped``) and holds only labels and lengths in memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from birnn.data import normalize
from birnn.data.mapped import CHUNK_BYTES, Mapped, NpyMap
from birnn.data.pipeline import Splits
from birnn.schema.errors import BirnnError
from birnn.system.files import atomic_write

FORMAT = "birnn-pack"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test", "val")
ARRAYS = ("x", "y", "lengths")
HEADER_BYTES = 256  # the .npy header is reserved at this size and rewritten with the final shape on close


def file_name(split: str, array: str) -> str:
    return f"{split}_{array}.npy"


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``HEADER_BYTES`` (so it can be rewritten in place)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    body = text.encode("latin1").ljust(HEADER_BYTES - 10 - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class _Appender:
    """One ``.npy`` file grown row block by row block; the header gets the final row count on ``close``."""

    def __init__(self, path: Path):
        self.path, self.dtype, self.row_shape, self.rows = path, None, None, 0
        self.file = path.open("wb")
        self.file.write(b"\0" * HEADER_BYTES)

    def append(self, block: np.ndarray) -> None:
        if self.dtype is None:
            self.dtype, self.row_shape = block.dtype, block.shape[1:]
        self.file.write(np.ascontiguousarray(block.astype(self.dtype, copy=False)).data)
        self.rows += len(block)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.flush()
        self.file.close()


class SplitWriter:
    """Appends chunks of one split: ``append(x, y[, lengths])``, every chunk with the same steps and features."""

    def __init__(self, out: Path, name: str, classes: int, variable: bool, moments: normalize.Moments | None):
        self.name, self.classes, self.variable, self.moments = name, classes, variable, moments
        self.files = {a: _Appender(out / file_name(name, a)) for a in ARRAYS[: 3 if variable else 2]}

    def append(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, lengths=None) -> None:
        """Add samples ``x`` (n, steps, features) of any real dtype, labels ``y`` (n,) in ``0..classes-1`` and,
        for variable-length series (zero-padded to ``steps``), ``lengths`` (n,) in ``1..steps``."""
        x, y = _numpy(x), _numpy(y)
        where = f"{self.name} chunk at sample {self.files['x'].rows}"
        if x.ndim != 3 or x.dtype.kind not in "fiu":
            raise BirnnError(
                f"{where}: inputs must be real numbers shaped (n, steps, features); got {x.dtype} {x.shape}"
            )
        first = self.files["x"].row_shape
        if first is not None and x.shape[1:] != first:
            raise BirnnError(f"{where}: shape {x.shape[1:]} per sample; earlier chunks had {first}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise BirnnError(f"{where}: labels must be {len(x)} integers; got {y.dtype} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            bad = int(y.max() if y.max() >= self.classes else y.min())
            raise BirnnError(f"{where}: label {bad} is outside 0..{self.classes - 1}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise BirnnError(f"{where}: inputs hold NaN or inf")
        if (lengths is None) == self.variable:
            raise BirnnError(f"{where}: give lengths with every chunk of variable-length series, and only then")
        if lengths is not None:
            lengths = _numpy(lengths).astype(np.int64)
            if lengths.shape != (len(x),) or (len(x) and (lengths.min() < 1 or lengths.max() > x.shape[1])):
                raise BirnnError(f"{where}: lengths must be {len(x)} integers in 1..{x.shape[1]}")
            self.files["lengths"].append(lengths)
        self.files["x"].append(x)
        self.files["y"].append(y.astype(np.int64))
        if self.moments is not None:
            self.moments.add(
                torch.from_numpy(x.astype(np.float32)), None if lengths is None else torch.from_numpy(lengths)
            )

    def close(self) -> dict:
        """Finish the files; their entries for the manifest."""
        if self.files["x"].dtype is None:
            raise BirnnError(f"split {self.name} got no samples")
        for f in self.files.values():
            f.close()
        return {a: describe(f.path) for a, f in self.files.items()}


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe(path: Path) -> dict:
    """A file's manifest entry: name, shape, dtype, size and SHA-256."""
    array = NpyMap(path).array
    return {
        "file": path.name,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }


class PackWriter:
    """Write a pack into ``out`` split by split, in chunks; the manifest comes last, on a clean ``close``.

    ``with PackWriter(out, classes) as pack: pack.split("train").append(x, y)`` (see docs/packed.md). An
    existing pack (or any non-empty directory) is refused unless ``overwrite``.
    """

    def __init__(
        self, out: Path, classes: list[str], kind: str = "series", variable: bool = False, overwrite: bool = False
    ):
        self.out, self.classes, self.kind, self.variable = Path(out), list(classes), kind, variable
        prepare(self.out, overwrite)
        self.moments = normalize.Moments()
        self.splits: dict[str, SplitWriter] = {}

    def split(self, name: str) -> SplitWriter:
        if name not in SPLITS:
            raise BirnnError(f"split {name!r}: a pack holds {', '.join(SPLITS)}")
        if name not in self.splits:
            moments = self.moments if name == "train" else None
            self.splits[name] = SplitWriter(self.out, name, len(self.classes), self.variable, moments)
        return self.splits[name]

    def close(self) -> Path:
        """Finish every split and write the manifest (atomically); returns its path."""
        missing = [s for s in ("train", "test") if s not in self.splits]
        if missing:
            raise BirnnError(f"a pack needs a train and a test split; {', '.join(missing)} got no samples")
        splits = {name: s.close() for name, s in self.splits.items()}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "classes": self.classes,
            "kind": self.kind,
            "normalization": self.moments.stats(),
            "splits": splits,
        }
        path = self.out / MANIFEST
        atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=2).encode() + b"\n"))
        return path

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None:
            self.close()
        else:
            for s in self.splits.values():
                for f in s.files.values():
                    f.file.close()


def prepare(out: Path, overwrite: bool) -> None:
    """Make ``out`` empty for a new pack: an existing pack only with ``overwrite`` (its manifest goes first)."""
    if out.exists() and not out.is_dir():
        raise BirnnError(f"{out} is a file, not a directory for a pack")
    if out.is_dir() and any(out.iterdir()):
        what = "a pack" if (out / MANIFEST).exists() else "files"
        if not overwrite:
            raise BirnnError(f"{out} already holds {what}; pass --overwrite to replace it, or pack elsewhere")
        if not (out / MANIFEST).exists() and not any(out.glob("*_x.npy")):
            raise BirnnError(f"{out} holds files that are not a pack; --overwrite replaces only packs")
        (out / MANIFEST).unlink(missing_ok=True)  # from now on the directory is an incomplete pack
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise BirnnError(f"data.path={path}: no such pack directory (make one with birnn-pack {path} data=...)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BirnnError(
            f"{path} has no {MANIFEST}: its packing did not finish (or it is not a pack); pack again with --overwrite"
        ) from None
    except (OSError, ValueError) as e:
        raise BirnnError(f"{path / MANIFEST} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BirnnError(f"{path / MANIFEST} is not a {FORMAT} version {VERSION} manifest")
    return manifest


def _open(path: Path, entry: dict) -> NpyMap:
    """One file of the pack, refused unless its size, shape and dtype are the manifest's."""
    file = path / entry["file"]
    try:
        size = file.stat().st_size
    except OSError as e:
        raise BirnnError(f"{file}: {e.strerror}; the pack is incomplete") from None
    if size != entry["bytes"]:
        raise BirnnError(f"{file} has {size} bytes; the manifest says {entry['bytes']} (truncated or replaced?)")
    mapped = NpyMap(file)
    if list(mapped.array.shape) != entry["shape"] or mapped.array.dtype.str != entry["dtype"]:
        raise BirnnError(
            f"{file} holds {mapped.array.dtype.str} {list(mapped.array.shape)}; the manifest says "
            f"{entry['dtype']} {entry['shape']}"
        )
    return mapped


def load_packed(root: str = "data", download: bool = False, path: str | None = None) -> Splits:
    """``data=packed``: the pack in directory ``path``; inputs stay memory-mapped, labels and lengths load."""
    if not path:
        raise BirnnError("data=packed needs the pack: data.path=DIR (made by birnn-pack DIR data=...)")
    where = Path(path)
    manifest = read_manifest(where)
    fields: dict = {}
    for split, entries in manifest["splits"].items():
        maps = {a: _open(where, e) for a, e in entries.items()}
        lengths = torch.from_numpy(np.array(maps["lengths"].array)) if "lengths" in maps else None
        stats = manifest["normalization"] if split == "train" else None
        fields[f"{split}_x"] = Mapped(maps["x"], lengths=lengths, stats=stats)
        fields[f"{split}_y"] = torch.from_numpy(np.array(maps["y"].array))
        fields[f"{split}_lengths"] = lengths
    return Splits(classes=manifest["classes"], kind=manifest["kind"], **fields)


def verify(path: Path, progress: Callable[[str], None] = lambda _: None) -> int:
    """Check every file of the pack against its manifest entry, SHA-256 included; the number of files."""
    manifest = read_manifest(path)
    entries = [e for split in manifest["splits"].values() for e in split.values()]
    for entry in entries:
        _open(path, entry)
        if sha256(path / entry["file"]) != entry["sha256"]:
            raise BirnnError(f"{path / entry['file']}: SHA-256 differs from the manifest's (the file changed)")
        progress(entry["file"])
    return len(entries)


def pack_splits(splits: Splits, out: Path, overwrite: bool = False) -> Path:
    """Write in-memory ``splits`` (a loader's, before hold-out and standardization) as a pack, in chunks."""
    variable = splits.train_lengths is not None or splits.test_lengths is not None
    with PackWriter(out, splits.classes, splits.kind, variable, overwrite) as pack:
        for name in SPLITS:
            x, y, lengths = (getattr(splits, f"{name}_{a}") for a in ("x", "y", "lengths"))
            if x is None:
                continue
            if variable and lengths is None:
                lengths = torch.full((len(x),), x.shape[1], dtype=torch.int64)
            writer = pack.split(name)
            step = max(1, CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
            for i in range(0, len(x), step):
                writer.append(x[i : i + step], y[i : i + step], None if lengths is None else lengths[i : i + step])
    return out / MANIFEST


def disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
