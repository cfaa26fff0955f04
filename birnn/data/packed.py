"""Packed datasets (``birnn-pack``, ``data=packed``): one ``.npy`` file per split and array, and a manifest.

A pack directory holds ``<split>_x.npy`` (inputs ``(N, steps, features)``, or int32 token IDs ``(N, steps)``
for text), ``<split>_y.npy`` (int64 labels ``(N,)``, or one per step ``(N, steps)`` with ``IGNORE`` at padding;
or float targets ``(N,)``, ``(N, d)`` or one per step ``(N, steps)`` with NaN where a step is not scored, and the
manifest's ``targets: values``) and, for variable-length series and text, ``<split>_lengths.npy`` (int64 valid
steps), for ``train``, ``test`` and optionally ``val``; and ``manifest.json``, written last and atomically: shapes,
dtypes, byte sizes and a SHA-256 per file, the classes (for values: the loader's names, possibly none), the kind,
the training split's standardization statistics (float inputs) or the vocabulary size and the tokenizer as JSON
(token IDs). A pack of classes has no ``targets`` key, as before values existed. A pack of text or tags made with
``data.vectors`` also holds ``vectors.npy``: the pretrained row of every token ID ((vocab_size, dim) float32, NaN
where a token has none) and, in the manifest, ``trained_vocab`` (IDs below it train, the rest are frozen pretrained
words); its manifest says version 2, which a birnn without this refuses rather than training without the vectors.
No manifest means the packing did not finish: such a directory is refused. Training reads the inputs through memory
maps (``birnn.data.mapped``) and holds only labels and lengths (and the vectors) in memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from birnn.data import normalize, tokenize
from birnn.data.checks import first_outside, lengths_fit, misplaced, unscorable
from birnn.data.mapped import CHUNK_BYTES, Mapped, NpyMap
from birnn.data.pipeline import IGNORE, Splits
from birnn.schema.errors import BirnnError
from birnn.system.files import Unreadable, atomic_write, read_json

FORMAT = "birnn-pack"
VERSION = 1
VECTORS_VERSION = 2  # a pack with pretrained word vectors (``vectors.npy``)
VERSIONS = (VERSION, VECTORS_VERSION)
VECTORS = "vectors.npy"
MAX_DIM = 1_000  # birnn.data.vectors' bound on the vectors' dimension
MANIFEST = "manifest.json"
PACKING = "packing.json"  # there while birnn-pack writes: with no manifest, the directory is an incomplete pack
SPLITS = ("train", "test", "val")
ARRAYS = ("x", "y", "lengths")
HEADER_BYTES = 256  # the .npy header is reserved at this size and rewritten with the final shape on close
MAX_IDS = 2**31  # token IDs are stored as int32
ENTRY = {"file", "shape", "dtype", "bytes", "sha256"}
VALUES = "values"  # the manifest's ``targets`` for float targets (absent: classes)


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
    """Appends chunks of one split: ``append(x, y[, lengths])``, every chunk with the same steps and features.

    ``vocab_size`` given: the inputs are token IDs, stored as int32; ``characters`` given too (``model.char_encoder``):
    each token's ID then its character IDs, ``(n, steps, 1 + chars)``. ``classes`` None: the targets are values."""

    def __init__(
        self,
        out: Path,
        name: str,
        classes: int | None,
        variable: bool,
        moments: normalize.Moments | None,
        vocab_size: int | None = None,
        characters: int | None = None,
    ):
        self.name, self.classes, self.variable, self.moments = name, classes, variable, moments
        self.vocab_size, self.characters = vocab_size, characters
        self.files = {a: _Appender(out / file_name(name, a)) for a in ARRAYS[: 3 if variable else 2]}

    def append(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, lengths=None) -> None:
        """Add samples ``x`` (n, steps, features) of any real dtype (token data: integer IDs (n, steps) in
        ``0..vocab_size-1``, 0 = padding), labels ``y`` (n,) in ``0..classes-1`` (or one per step, (n, steps),
        ``IGNORE`` at padding; values: real numbers (n,), (n, d) or (n, steps), NaN only where a step of a 2-D ``y``
        is not scored) and, for variable-length series (zero-padded to ``steps``), ``lengths`` (n,) in
        ``1..steps``."""
        x, y = _numpy(x), _numpy(y)
        where = f"{self.name} chunk at sample {self.files['x'].rows}"
        if self.vocab_size is not None:
            shape = "(n, steps, 1 + characters)" if self.characters else "(n, steps)"
            if x.ndim != (3 if self.characters else 2) or x.dtype.kind not in "iu":
                raise BirnnError(f"{where}: token IDs must be integers shaped {shape}; got {x.dtype} {x.shape}")
            if (bad := first_outside(x[..., 0] if self.characters else x, self.vocab_size)) is not None:
                raise BirnnError(f"{where}: token ID {bad} is outside 0..{self.vocab_size - 1}")
            if self.characters and (bad := first_outside(x[..., 1:], self.characters)) is not None:
                raise BirnnError(f"{where}: character ID {bad} is outside 0..{self.characters - 1}")
            x = x.astype(np.int32)
        elif x.ndim != 3 or x.dtype.kind not in "fiu":
            raise BirnnError(
                f"{where}: inputs must be real numbers shaped (n, steps, features); got {x.dtype} {x.shape}"
            )
        first = self.files["x"].row_shape
        if first is not None and x.shape[1:] != first:
            raise BirnnError(f"{where}: shape {x.shape[1:]} per sample; earlier chunks had {first}")
        if (lengths is None) == self.variable:
            raise BirnnError(f"{where}: give lengths with every chunk of variable-length series, and only then")
        if lengths is not None:
            lengths = _numpy(lengths)
            if not lengths_fit(lengths, len(x), x.shape[1]):
                raise BirnnError(f"{where}: lengths must be {len(x)} integers in 1..{x.shape[1]}; got {lengths.dtype}")
            lengths = lengths.astype(np.int64)
        if self.classes is None:
            y = self._values(y, len(x), where)
        else:
            self._labels(y, len(x), x.shape[1], lengths, where)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise BirnnError(f"{where}: inputs hold NaN or inf")
        if lengths is not None:
            self.files["lengths"].append(lengths)
        self.files["x"].append(x)
        self.files["y"].append(y if self.classes is None else y.astype(np.int64))
        if self.moments is not None and self.vocab_size is None:
            self.moments.add(
                torch.from_numpy(x.astype(np.float32)), None if lengths is None else torch.from_numpy(lengths)
            )

    def _labels(self, y: np.ndarray, n: int, steps: int, lengths: np.ndarray | None, where: str) -> None:
        """Class labels ``(n,)`` or one per step ``(n, steps)``, as every chunk before, in ``0..classes-1``."""
        per_step = y.shape[1:] if self.files["y"].row_shape is None else self.files["y"].row_shape
        if y.shape not in ((n,), (n, steps)) or y.shape[1:] != per_step or y.dtype.kind not in "iu":
            shape = f"({n},)" if not per_step else f"({n}, {steps}) (one per step)"
            raise BirnnError(f"{where}: labels must be integers shaped {shape}; got {y.dtype} {y.shape}")
        if (bad := first_outside(y[y != IGNORE] if per_step else y, self.classes)) is not None:
            raise BirnnError(f"{where}: label {bad} is outside 0..{self.classes - 1}")
        if per_step and (wrong := misplaced(y, lengths)):
            raise BirnnError(f"{where}: {wrong}")

    def _values(self, y: np.ndarray, n: int, where: str) -> np.ndarray:
        """Float targets ``(n,)`` or ``(n, k)``, as every chunk before; integers become float32, floats keep their
        dtype (the loader's: training from the pack sees the same numbers)."""
        first = self.files["y"].row_shape
        other = first is not None and y.shape[1:] != first
        if y.dtype.kind not in "fiu" or y.ndim not in (1, 2) or len(y) != n or other:
            shape = f"({n},) or ({n}, d)" if first is None else f"({n}, {', '.join(map(str, first))})"
            raise BirnnError(f"{where}: targets must be real numbers shaped {shape}; got {y.dtype} {y.shape}")
        y = y if y.dtype.kind == "f" else y.astype(np.float32)
        if wrong := unscorable(y):
            raise BirnnError(f"{where}: {wrong}")
        return y

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

    ``with PackWriter(out, classes) as pack: pack.split("train").append(x, y)`` (see docs/packed.md). ``out``
    must be new or empty, or hold a pack birnn-pack wrote and ``overwrite`` be set (``prepare``). Token data:
    ``vocab_size`` and the ``tokenizer`` (JSON, ``birnn.data.tokenize``) that made the IDs, if one did; with
    pretrained word vectors, ``vectors`` (``Splits.word_vectors``) and ``trained_vocab``. Float targets
    (regression): ``values=True``; ``classes`` then names the outputs, if anything does.
    """

    def __init__(
        self,
        out: Path,
        classes: list[str],
        kind: str = "series",
        variable: bool = False,
        overwrite: bool = False,
        vocab_size: int | None = None,
        tokenizer: str | None = None,
        carried: dict | None = None,
        vectors: Tensor | np.ndarray | None = None,
        trained_vocab: int | None = None,
        values: bool = False,
    ):
        self.out, self.classes, self.kind, self.variable = Path(out), list(classes), kind, variable
        self.values = values
        self.carried = carried or {}  # more manifest fields: the training settings of birnn.data.carried
        self.vocab_size, self.tokenizer = check_vocab(vocab_size, tokenizer, "PackWriter"), tokenizer
        self.vectors = None if vectors is None else _numpy(vectors)
        if self.vectors is not None:
            check_vectors(self.vectors, trained_vocab, self.vocab_size, tokenizer, "PackWriter")
        self.trained_vocab = trained_vocab
        self.characters = character_ids(tokenizer)
        prepare(self.out, overwrite)
        self.moments = normalize.Moments()
        self.splits: dict[str, SplitWriter] = {}

    def split(self, name: str) -> SplitWriter:
        if name not in SPLITS:
            raise BirnnError(f"split {name!r}: a pack holds {', '.join(SPLITS)}")
        if name not in self.splits:
            taken = [f for a in ARRAYS if _present(self.out / (f := file_name(name, a)))]
            if taken:  # left by the user in a pack directory: never written over
                raise BirnnError(f"{self.out / taken[0]} is not birnn-pack's: move it away, or pack elsewhere")
            moments = self.moments if name == "train" else None
            classes = None if self.values else len(self.classes)
            self.splits[name] = SplitWriter(
                self.out, name, classes, self.variable, moments, self.vocab_size, self.characters
            )
        return self.splits[name]

    def close(self) -> Path:
        """Finish every split and write the manifest (atomically); returns its path."""
        missing = [s for s in ("train", "test") if s not in self.splits]
        if missing:
            raise BirnnError(f"a pack needs a train and a test split; {', '.join(missing)} got no samples")
        splits = {name: s.close() for name, s in self.splits.items()}
        vectors = {}
        if self.vectors is not None:
            writer = _Appender(self.out / VECTORS)
            writer.append(self.vectors.astype(np.float32))
            writer.close()
            vectors = {"vectors": describe(self.out / VECTORS), "trained_vocab": self.trained_vocab}
        compared = 2 if self.characters else 1  # with characters, each split is as wide as its own longest word
        if len({(s.files["x"].row_shape[compared:], len(s.files["y"].row_shape)) for s in self.splits.values()}) > 1:
            raise BirnnError("the splits differ in features per step, or in labels per sample or per step")
        manifest = {
            "format": FORMAT,
            "version": VECTORS_VERSION if vectors else VERSION,
            "classes": self.classes,
            "kind": self.kind,
            "normalization": None if self.vocab_size is not None else self.moments.stats(),
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "splits": splits,
            **vectors,
            **({"targets": VALUES} if self.values else {}),
            **self.carried,
        }
        path = self.out / MANIFEST
        atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=2).encode() + b"\n"))
        (self.out / PACKING).unlink(missing_ok=True)
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
    """Make ``out`` ready for a new pack: new or empty, or with ``overwrite`` a pack birnn-pack wrote there.

    Only what birnn-pack wrote is removed: the files its manifest lists, or those of an incomplete pack (one that
    still has ``PACKING``); anything else in ``out`` stays. ``PACKING`` is written first, so an interrupted
    overwrite leaves an incomplete pack, never a mix nor a folder that ``--overwrite`` no longer recognizes. ``out``
    may be a symbolic link to a directory: the files are replaced inside its target.
    """
    if out.is_symlink() and not out.exists():
        raise BirnnError(f"{out} is a symbolic link to {out.readlink()}, which does not exist")
    if out.exists() and not out.is_dir():
        raise BirnnError(f"{out} is a file, not a directory for a pack")
    if out.is_dir() and any(out.iterdir()):
        what, own = _own_files(out)
        if _present(out / PACKING) and _format_of(out / PACKING) != FORMAT:
            raise BirnnError(f"{out / PACKING} is not birnn-pack's: move it away, or pack elsewhere")
        if not overwrite:
            raise BirnnError(f"{out} already holds {what}; pass --overwrite to replace it, or pack elsewhere")
        _mark_packing(out)  # from now on the directory is an incomplete pack
        for name in sorted(own - {PACKING}, key=lambda n: n != MANIFEST):  # the manifest first
            (out / name).unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    _mark_packing(out)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _mark_packing(out: Path) -> None:
    atomic_write(out / PACKING, lambda f: f.write(json.dumps({"format": FORMAT, "version": VERSION}).encode() + b"\n"))


def _own_files(out: Path) -> tuple[str, set[str]]:
    """What ``out`` (not empty) holds and the names in it that birnn-pack wrote; refused unless it holds a pack
    that birnn-pack wrote: a manifest with its format key and file list, or the mark of an incomplete pack."""
    if _present(out / MANIFEST):
        try:
            manifest = read_manifest(out)
        except BirnnError as e:
            if _format_of(out / MANIFEST) != FORMAT:
                raise BirnnError(
                    f"{out} holds a {MANIFEST} that is not birnn-pack's: birnn-pack writes only into a new or empty "
                    "directory, and --overwrite replaces only a pack birnn-pack wrote; pack elsewhere"
                ) from None
            raise BirnnError(f"{e}; --overwrite replaces only the files a manifest lists: pack elsewhere") from None
        listed = {e["file"] for e in entries(manifest)}
        return "a pack", {MANIFEST, PACKING, *listed}
    if _format_of(out / PACKING) == FORMAT:
        names = {file_name(split, a) for split in SPLITS for a in ARRAYS} | {VECTORS}
        return "an incomplete pack (no manifest)", {PACKING, *(n for n in names if (out / n).exists())}
    raise BirnnError(
        f"{out} holds files and no pack (no birnn-pack {MANIFEST}): birnn-pack writes only into a new or empty "
        "directory, and --overwrite replaces only a pack birnn-pack wrote; pack elsewhere"
    )


def _format_of(path: Path) -> object:
    """The ``format`` key of the JSON object in ``path`` (a regular file of at most 64 MiB), else None."""
    try:
        if not path.is_file() or path.stat().st_size > 2**26:
            return None
        content = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return content.get("format") if isinstance(content, dict) else None


def check_vocab(vocab_size: object, tokenizer: object, where: str) -> int | None:
    """``vocab_size`` as an int (None: not token data), refused unless in ``2..MAX_IDS`` and, with a ``tokenizer``
    (JSON, checked like a checkpoint's), its number of token IDs."""
    if vocab_size is None:
        if tokenizer is not None:
            raise BirnnError(f"{where}: a tokenizer comes with token data, and vocab_size is null")
        return None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or not 2 <= vocab_size <= MAX_IDS:
        raise BirnnError(f"{where}: vocab_size {vocab_size!r} is not a number of token IDs (2..{MAX_IDS}, 0 = padding)")
    if tokenizer is not None:
        try:
            size = tokenize.from_json(tokenizer).size
        except BirnnError as e:
            raise BirnnError(f"{where}: {e}") from None
        if size != vocab_size:
            raise BirnnError(f"{where}: vocab_size {vocab_size} is not its tokenizer's {size} token IDs")
    return int(vocab_size)


def character_ids(tokenizer: str | None) -> int | None:
    """The number of character IDs of a (checked) tokenizer's characters (``model.char_encoder``), else None."""
    return None if tokenizer is None else tokenize.from_json(tokenizer).character_ids


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise BirnnError(f"data.path={path}: no such pack directory (make one with birnn-pack {path} data=...)")
    if not (path / MANIFEST).exists():
        raise BirnnError(
            f"{path} has no {MANIFEST}: its packing did not finish (or it is not a pack); pack again with --overwrite"
        )
    try:
        manifest = read_json(path / MANIFEST)
    except Unreadable as e:
        raise BirnnError(f"{path / MANIFEST} is unreadable: {MANIFEST}: {e.reason}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") not in VERSIONS:
        raise BirnnError(f"{path / MANIFEST} is not a {FORMAT} version {VERSION} or {VECTORS_VERSION} manifest")
    if not _well_formed(manifest):
        raise BirnnError(
            f"{path / MANIFEST} is damaged: it needs classes (names; none only with targets: values), a kind, and "
            "splits train, test (and val) with the same files each, every file's entry as birnn-pack writes it"
        )
    return manifest


def _well_formed(manifest: dict) -> bool:
    classes, kind, splits = manifest.get("classes"), manifest.get("kind"), manifest.get("splits")
    values = manifest.get("targets") == VALUES
    if "targets" in manifest and not values:
        return False
    if not (isinstance(classes, list) and (classes or values) and all(isinstance(c, str) for c in classes)):
        return False
    if not (isinstance(kind, str) and isinstance(splits, dict) and {"train", "test"} <= splits.keys() <= set(SPLITS)):
        return False
    arrays = {s: entries.keys() if isinstance(entries, dict) else None for s, entries in splits.items()}
    if (
        any(a not in ({"x", "y"}, set(ARRAYS)) for a in arrays.values())
        or len(set(map(frozenset, arrays.values()))) > 1
    ):
        return False
    vectors = manifest.get("vectors")
    entry = isinstance(vectors, dict) and vectors.keys() >= ENTRY and vectors["file"] == VECTORS
    if (vectors is not None) != (manifest["version"] == VECTORS_VERSION) or (vectors is not None and not entry):
        return False
    return all(
        isinstance(e, dict) and e.keys() >= ENTRY and e["file"] == file_name(split, a)
        for split, entries in splits.items()
        for a, e in entries.items()
    ) and _statistics(manifest.get("normalization"))


def entries(manifest: dict) -> list[dict]:
    """Every file entry of a (well-formed) manifest: the splits' arrays, then the vectors, if any."""
    listed = [e for split in manifest["splits"].values() for e in split.values()]
    return listed + ([manifest["vectors"]] if manifest.get("vectors") is not None else [])


def check_vectors(vectors: np.ndarray, trained_vocab: object, vocab_size: int | None, tokenizer: object, where: str):
    """Pretrained rows for token IDs, as ``birnn.data.vectors.fitted_table`` makes them: float32 ``(vocab_size,
    dim)`` with ``dim`` in ``1..MAX_DIM``, no infinity, NaN rows only below ``trained_vocab`` (tokens without a
    vector), ``trained_vocab`` in ``2..vocab_size`` and the tokenizer's own (a crafted pack is refused here)."""
    if vocab_size is None:
        raise BirnnError(f"{where}: pretrained word vectors come with token data, and vocab_size is null")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != vocab_size:
        raise BirnnError(
            f"{where}: the vectors must be float32 ({vocab_size}, dim), one row per token ID; got {vectors.dtype} "
            f"{list(vectors.shape)}"
        )
    if not 1 <= vectors.shape[1] <= MAX_DIM:
        raise BirnnError(f"{where}: vectors of {vectors.shape[1]} dimensions (1..{MAX_DIM})")
    if isinstance(trained_vocab, bool) or not isinstance(trained_vocab, (int, np.integer)):
        raise BirnnError(f"{where}: trained_vocab {trained_vocab!r} is not a number of token IDs")
    if not 2 <= trained_vocab <= vocab_size:
        raise BirnnError(f"{where}: trained_vocab {trained_vocab} is outside 2..{vocab_size} (vocab_size)")
    stored = tokenize.from_json(tokenizer).trained if isinstance(tokenizer, str) else None
    if stored != trained_vocab:
        raise BirnnError(f"{where}: trained_vocab {trained_vocab} is not its tokenizer's ({stored})")
    if np.isinf(vectors).any() or np.isnan(vectors[trained_vocab:]).any():
        raise BirnnError(f"{where}: the vectors hold infinity, or NaN in a frozen word's row (ID {trained_vocab} on)")


def _statistics(stats: object) -> bool:
    """The training split's statistics: null, or ``mean`` and ``std`` lists of one finite number per feature
    (``std`` positive); their length is checked against the inputs in ``load_packed``."""
    if stats is None:
        return True
    if not isinstance(stats, dict) or stats.keys() != {"mean", "std"}:
        return False
    mean, std = stats["mean"], stats["std"]
    numbers = all(
        isinstance(v, list) and v and all(type(n) in (int, float) and math.isfinite(n) for n in v) for v in (mean, std)
    )
    return numbers and len(mean) == len(std) and all(n > 0 for n in std)


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


def load_packed(
    root: str = "data", download: bool = False, path: str | None = None, fitted: str | None = None
) -> Splits:
    """``data=packed``: the pack in directory ``path``; inputs stay memory-mapped, labels, lengths and pretrained
    vectors load. ``fitted``: a checkpoint's tokenizer, which must be the pack's (its token IDs mean what the model
    learned); its model holds the vectors, which are then not read."""
    if not path:
        raise BirnnError("data=packed needs the pack: data.path=DIR (made by birnn-pack DIR data=...)")
    where = Path(path)
    manifest = read_manifest(where)
    tokenizer = manifest.get("tokenizer")
    vocab_size = check_vocab(manifest.get("vocab_size"), tokenizer, str(where / MANIFEST))
    if fitted is not None and fitted != tokenizer:
        raise BirnnError(
            f"{where} was tokenized with another tokenizer than the checkpoint's: its token IDs mean other words"
        )
    characters = character_ids(tokenizer)
    fields: dict = {}
    for split, entries in manifest["splits"].items():
        maps = {a: _open(where, e) for a, e in entries.items()}
        ndim = maps["x"].array.ndim
        if ndim != (2 if vocab_size is not None and characters is None else 3):
            raise BirnnError(f"{where}: {split}_x holds {ndim}-D inputs; vocab_size is {vocab_size}")
        classes = None if manifest.get("targets") == VALUES else len(manifest["classes"])
        y, lengths = _labels_and_lengths(where, split, maps, classes)
        stats = manifest["normalization"] if split == "train" else None
        if stats is not None and (vocab_size is not None or len(stats["mean"]) != maps["x"].array.shape[-1]):
            raise BirnnError(
                f"{where / MANIFEST}: its normalization has {len(stats['mean'])} features; {split}_x has "
                f"{'token IDs' if vocab_size is not None else maps['x'].array.shape[-1]}"
            )
        fields[f"{split}_x"] = Mapped(
            maps["x"], lengths=lengths, stats=stats, vocab_size=vocab_size, characters=characters
        )
        fields[f"{split}_y"], fields[f"{split}_lengths"] = y, lengths
    xs, ys = [fields[f"{s}_x"] for s in manifest["splits"]], [fields[f"{s}_y"] for s in manifest["splits"]]
    compared = 2 if characters else 1  # with characters, each split is as wide as its own longest word
    if len({x.raw_shape[compared:] for x in xs}) > 1 or len({y.ndim for y in ys}) > 1:
        raise BirnnError(f"{where}: its splits differ in features per step, or in labels per sample or per step")
    vectors = None
    if manifest.get("vectors") is not None and fitted is None:  # a checkpoint's model holds its vectors already
        vectors = np.array(_open(where, manifest["vectors"]).array)
        check_vectors(vectors, manifest.get("trained_vocab"), vocab_size, tokenizer, str(where / MANIFEST))
        vectors = torch.from_numpy(vectors)
    return Splits(
        classes=manifest["classes"],
        kind=manifest["kind"],
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        fingerprint=fingerprint(manifest),
        word_vectors=vectors,
        trained_vocab=None if tokenizer is None else tokenize.from_json(tokenizer).trained,  # as data=tagged's
        characters=characters,
        **fields,
    )


def vectors_dimension(path: Path) -> int | None:
    """The dimension of the pretrained word vectors the pack at ``path`` holds (from its manifest), else None."""
    vectors = read_manifest(path).get("vectors")
    if vectors is None:
        return None
    shape = vectors["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and 1 <= shape[1] <= MAX_DIM):
        raise BirnnError(f"{path / MANIFEST}: its vectors' shape {shape!r} is not (token IDs, 1..{MAX_DIM})")
    return shape[1]


def fingerprint(manifest: dict) -> str:
    """The pack's content as a SHA-256 over its files' SHA-256s (from the manifest: nothing is read) and classes:
    a repacked or replaced pack has another (``birnn.data.pipeline.Splits.fingerprint``)."""
    files = {s: {a: e["sha256"] for a, e in entries.items()} for s, entries in manifest["splits"].items()}
    content = [manifest["classes"], files]
    if manifest.get("vectors") is not None:  # packs without vectors keep the fingerprint they had
        content.append(manifest["vectors"]["sha256"])
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _labels_and_lengths(
    where: Path, split: str, maps: dict[str, NpyMap], classes: int | None
) -> tuple[Tensor, Tensor | None]:
    """The split's labels (``classes`` None: float targets) and lengths, loaded and checked against its inputs and
    the classes (a pack's files are data: a crafted or damaged one is refused here, not by a traceback or a wrong
    loss in training)."""
    x, y = maps["x"].array, np.array(maps["y"].array)
    lengths = np.array(maps["lengths"].array) if "lengths" in maps else None
    (n, steps), name = x.shape[:2], f"{where}: {split}"
    if x.dtype.kind not in ("iu" if x.ndim == 2 else "fiu") or not n:
        raise BirnnError(f"{name}_x holds {x.dtype} {list(x.shape)}; expected samples of numbers (token IDs: integers)")
    if lengths is not None and not lengths_fit(lengths, n, steps):
        raise BirnnError(f"{name}_lengths must be {n} integers in 1..{steps}")
    if classes is None:
        if y.dtype.kind != "f" or y.ndim not in (1, 2) or len(y) != n:
            raise BirnnError(f"{name}_y holds {y.dtype} {list(y.shape)}; expected float targets ({n},) or ({n}, d)")
        if wrong := unscorable(y):
            raise BirnnError(f"{name}_y: {wrong}")
        return torch.from_numpy(y), None if lengths is None else torch.from_numpy(lengths.astype(np.int64))
    if y.dtype.kind not in "iu" or y.shape not in ((n,), (n, steps)):
        raise BirnnError(f"{name}_y holds {y.dtype} {list(y.shape)}; expected integer labels ({n},) or ({n}, {steps})")
    if (bad := first_outside(y[y != IGNORE] if y.ndim == 2 else y, classes)) is not None:
        raise BirnnError(f"{name}_y holds label {bad}, outside 0..{classes - 1} (the manifest's classes)")
    if y.ndim == 2 and (wrong := misplaced(y, lengths)):
        raise BirnnError(f"{name}_y: {wrong}")
    return torch.from_numpy(y.astype(np.int64)), None if lengths is None else torch.from_numpy(lengths.astype(np.int64))


def verify(path: Path, progress: Callable[[str], None] = lambda _: None) -> int:
    """Check every file of the pack against its manifest entry, SHA-256 included; the number of files."""
    listed = entries(read_manifest(path))
    for entry in listed:
        _open(path, entry)
        if sha256(path / entry["file"]) != entry["sha256"]:
            raise BirnnError(f"{path / entry['file']}: SHA-256 differs from the manifest's (the file changed)")
        progress(entry["file"])
    return len(listed)


def pack_splits(splits: Splits, out: Path, overwrite: bool = False, carried: dict | None = None) -> Path:
    """Write in-memory ``splits`` (a loader's, before hold-out and standardization) as a pack, in chunks; ``carried``:
    more manifest fields (``birnn.data.carried``)."""
    variable = splits.train_lengths is not None or splits.test_lengths is not None
    values = splits.train_y.is_floating_point()
    args = (splits.classes, splits.kind, variable, overwrite, splits.vocab_size, splits.tokenizer, carried)
    with PackWriter(out, *args, vectors=splits.word_vectors, trained_vocab=splits.trained_vocab, values=values) as pack:
        for name in SPLITS:
            x, y, lengths = (getattr(splits, f"{name}_{a}") for a in ("x", "y", "lengths"))
            if x is None:
                continue
            if variable and lengths is None:
                lengths = torch.full((len(x),), x.shape[1], dtype=torch.int64)
            writer = pack.split(name)
            for rows in normalize.row_ranges(len(x), x[0].numel() * x.element_size(), CHUNK_BYTES):
                writer.append(x[rows], y[rows], None if lengths is None else lengths[rows])
    return out / MANIFEST


def disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
