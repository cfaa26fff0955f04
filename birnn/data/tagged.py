"""``data=tagged``: sentences with one tag per token, CoNLL-style columns or ``word/tag`` tokens (the Brown corpus).

``data.format=conll``: one token per line, whitespace-separated columns (``data.token_column``,
``data.tag_column``, 0-based, -1 the last), a blank line between sentences, ``-DOCSTART-`` lines skipped.
``data.format=slash``: one sentence per line of ``word/tag`` tokens (split at the last ``/``). ``data.path`` (and
``data.test_path``) is a file or a folder whose files are all read, sorted. Sentences are never truncated: with
``data.max_length`` a longer one is refused, naming file and line. The word vocabulary (``birnn.data.tokenize``)
is fitted on the training sentences only; the classes are the tags of both splits (the tag set: a rare tag may
occur in test sentences only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from birnn.data import tokenize
from birnn.data.pipeline import IGNORE, Splits
from birnn.data.text import check_test_fraction, padded, spelled
from birnn.data.vectors import fitted_table, read_vectors
from birnn.schema.config import SIGNATURE_SUFFIXES
from birnn.schema.errors import BirnnError
from birnn.system.files import lines as text_lines
from birnn.system.files import not_regular, read_text

FORMATS = ("conll", "slash")
SPACE = re.compile(r"[ \t\r\f\v]+")  # columns and tokens part at ASCII white space (U+00A0, U+2028 ... are text)


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    where: str  # file:line of its first token


def fields(line: str) -> list[str]:
    """The columns (``conll``) or tokens (``slash``) of one line."""
    return [f for f in SPACE.split(line) if f]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BirnnError(f"{path}: an empty folder")
        return files
    if (reason := not_regular(path)) is not None:
        raise BirnnError(f"{path}: {reason}")
    return [path]


def read_sentences(path: Path, format: str = "conll", token_column: int = 0, tag_column: int = -1) -> list[Sentence]:
    """Every sentence of the file (or the folder's files) at ``path``; a malformed line is one error naming it."""
    if format not in FORMATS:
        raise BirnnError(f"data.format must be one of {', '.join(FORMATS)}; got {format!r}")
    sentences: list[Sentence] = []
    for file in _files(path):
        lines = text_lines(read_text(file))
        sentences += _slash(lines, file) if format == "slash" else _conll(lines, file, token_column, tag_column)
    if not sentences:
        raise BirnnError(f"{path} holds no sentences")
    return sentences


def _slash(lines: list[str], file: Path) -> list[Sentence]:
    sentences = []
    for number, line in enumerate(lines, 1):
        tokens = fields(line)
        pairs = [token.rpartition("/") for token in tokens]
        bad = next((t for t, (word, slash, tag) in zip(tokens, pairs) if not (word and slash and tag)), None)
        if bad is not None:
            raise BirnnError(f"{file}:{number}: {bad!r} is not word/tag (data.format=slash)")
        if pairs:
            sentences.append(Sentence([w for w, _, _ in pairs], [t for _, _, t in pairs], f"{file}:{number}"))
    return sentences


def _conll(lines: list[str], file: Path, token_column: int, tag_column: int) -> list[Sentence]:
    sentences, tokens, tags, start = [], [], [], 0
    need = max(token_column, tag_column) + 1
    for number, line in enumerate([*lines, ""], 1):
        columns = fields(line)
        if columns and columns[0] == "-DOCSTART-":
            continue
        if not columns:
            if tokens:
                sentences.append(Sentence(tokens, tags, f"{file}:{start}"))
            tokens, tags = [], []
            continue
        if len(columns) < max(need, 2, -min(token_column, tag_column)):
            raise BirnnError(
                f"{file}:{number}: {len(columns)} column(s), but data.token_column={token_column} and "
                f"data.tag_column={tag_column} need more (data.format=conll: token and tag per line)"
            )
        start = start if tokens else number
        tokens.append(columns[token_column])
        tags.append(columns[tag_column])
    return sentences


def load_tagged(
    root: str = "data",
    download: bool = False,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    test_seed: int = 0,
    format: str = "conll",
    token_column: int = 0,
    tag_column: int = -1,
    vocab_size: int | None = None,
    min_freq: int = 1,
    lowercase: bool = True,
    max_length: int | None = None,
    unknown: str = "unk",
    signature_suffixes: Sequence[str] = SIGNATURE_SUFFIXES,
    fitted: str | None = None,
    fitted_classes: Sequence[str] | None = None,
    vectors: str | None = None,
    vectors_format: str = "auto",
    max_word_length: int = 20,
    characters: bool = False,
) -> Splits:
    """The tagged sentences in ``path`` (and ``test_path``) as token IDs and per-step tags; ``root``/``download``
    are unused. A checkpoint's tokenizer and tags (``fitted``, ``fitted_classes``) with a ``test_path``: the
    training sentences are not read (the training split is empty). ``characters`` (``model.char_encoder``): each
    token's characters as written too, the character vocabulary fitted on the training sentences
    (``birnn.data.text.spelled``); a fitted tokenizer brings its own, or none."""
    test_only = bool(fitted and fitted_classes is not None and test_path)
    if not path and not test_only:
        raise BirnnError("data=tagged needs the sentences: data.path=FILE or FOLDER (data.format=conll|slash)")
    train = [] if test_only else read_sentences(Path(path), format, token_column, tag_column)
    if test_path:
        test = read_sentences(Path(test_path), format, token_column, tag_column)
    else:
        check_test_fraction(test_fraction)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(test_seed)).tolist()
        n_test = max(1, round(test_fraction * len(train)))
        test, train = [train[i] for i in order[:n_test]], [train[i] for i in order[n_test:]]
        if not train:
            raise BirnnError(
                f"{path}: {len(test)} sentence(s), too few to hold out a test split (data.test_fraction="
                f"{test_fraction}) and train on the rest: give more sentences, or a test file in data.test_path"
            )
    long = next((s for s in (*train, *test) if max_length and len(s.tokens) > max_length), None)
    if long is not None:
        raise BirnnError(
            f"{long.where}: a sentence of {len(long.tokens)} tokens, longer than data.max_length={max_length} "
            "(tagging never truncates: raise data.max_length or set it to null)"
        )
    pretrained = read_vectors(vectors, vectors_format) if vectors is not None and not fitted else None
    tok = (
        tokenize.from_json(fitted)
        if fitted
        else tokenize.fit(
            (s.tokens for s in train),
            "word",
            vocab_size,
            min_freq,
            lowercase,
            False,
            unknown,
            signature_suffixes,
            pretrained,
        )
    )
    if characters and not fitted:
        tokenize.fit_characters(tok, (t for s in train for t in s.tokens), max_word_length)
    classes = sorted({t for s in (*train, *test) for t in s.tags})  # the tag set (a rare tag may be test-only)
    if fitted_classes is not None:
        unknown = next((t for t in classes if t not in fitted_classes), None)
        if unknown is not None:
            raise BirnnError(f"{test_path or path} has tag {unknown!r}, which the model was not trained on")
        classes = list(fitted_classes)
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for name, sentences in (("train", train), ("test", test)):
        x, lengths = padded([tok.ids(s.tokens) for s in sentences])
        y = torch.full(x.shape, IGNORE, dtype=torch.int64)
        if tok.characters is not None:
            x = spelled(x, [tok.spelled(s.tokens) for s in sentences])
        for row, s in enumerate(sentences):
            y[row, : len(s.tags)] = torch.tensor([index[t] for t in s.tags])
        splits[name] = (x, y, lengths)
    return Splits(
        splits["train"][0],
        splits["train"][1],
        splits["test"][0],
        splits["test"][1],
        classes=classes,
        train_lengths=splits["train"][2],
        test_lengths=splits["test"][2],
        kind="text",
        vocab_size=tok.size,
        tokenizer=tok.to_json(),
        word_vectors=None
        if pretrained is None
        else fitted_table(tok.vocab, pretrained, (t for s in train for t in s.tokens)),
        trained_vocab=tok.trained,
        characters=tok.character_ids,
    )
