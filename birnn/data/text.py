"""``data=text``: labelled texts from CSV/TSV/JSONL files or class folders, tokenized into padded token IDs.

``data.path`` is a ``.csv``/``.tsv`` file (a header row naming ``data.text_column`` and ``data.label_column``), a
``.jsonl`` file (one object per line with those keys), or a folder with one sub-folder of ``.txt`` files per class
(each file one sample). The test split is ``data.test_path`` (same form) or a stratified ``data.test_fraction`` of
``data.path`` drawn with ``data.test_seed``. Under ``task=regression`` the labels are values (a review's rating):
each must read as a finite number, and the test fraction is drawn unstratified. The tokenizer
(``birnn.data.tokenize``) is fitted on the training split only, or given (a checkpoint's, ``fitted``).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from birnn.data import tokenize
from birnn.data.pipeline import Splits
from birnn.data.vectors import fitted_table, read_vectors
from birnn.schema.config import SIGNATURE_SUFFIXES
from birnn.schema.errors import BirnnError
from birnn.system.files import loads_json, not_regular, read_text, text_stream

log = logging.getLogger("birnn")
TABLES = {".csv": ",", ".tsv": "\t"}
MAX_PADDED = 2**28  # token IDs in one padded split (int64: 2.1 GB); beyond, data.max_length must cut the texts


def read_texts(path: Path, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str]]:
    """Texts and their labels (as strings) from a CSV/TSV/JSONL file or a folder of class folders."""
    if path.is_dir():
        return _read_folder(path)
    if path.suffix not in (*TABLES, ".jsonl"):
        if (reason := not_regular(path)) is not None:
            raise BirnnError(f"{path}: {reason}")
        raise BirnnError(f"{path}: expected a .csv, .tsv or .jsonl file, or a folder of class folders")
    try:
        with text_stream(path) as f:
            return (
                _read_table(f, path, text_column, label_column)
                if path.suffix in TABLES
                else _read_jsonl(f, path, text_column, label_column)
            )
    except UnicodeDecodeError as e:
        raise BirnnError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise BirnnError(f"{path}: not a readable table ({e})") from None


def _read_table(f: TextIO, path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(f, delimiter=TABLES[path.suffix])
    header = reader.fieldnames or []
    twice = next((c for c in header if header.count(c) > 1), None)
    if twice is not None:
        raise BirnnError(f"{path}:1: column {twice!r} appears twice in the header; name each column once")
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise BirnnError(
            f"{path}:1: no column {missing[0]!r} in the header ({', '.join(header)}); "
            "set data.text_column / data.label_column"
        )
    texts, labels = [], []
    for row in reader:
        if row[text_column] is None or row[label_column] is None:
            raise BirnnError(f"{path}:{reader.line_num}: the row has too few fields")
        texts.append(row[text_column])
        labels.append(row[label_column])
    return _some(texts, labels, path)


def _read_jsonl(f: TextIO, path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for number, line in enumerate(f, 1):
        if line.strip():
            record = _json_line(line, path, number)
            if not isinstance(record.get(text_column), str) or label_column not in record:
                raise BirnnError(
                    f"{path}:{number}: needs a string {text_column!r} and a {label_column!r} "
                    "(data.text_column / data.label_column)"
                )
            texts.append(record[text_column])
            labels.append(str(record[label_column]))
    return _some(texts, labels, path)


def _some(texts: list[str], labels: list[str], path: Path) -> tuple[list[str], list[str]]:
    if not texts:
        raise BirnnError(f"{path} holds no samples")
    return texts, labels


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        record = loads_json(line)
    except ValueError as e:
        raise BirnnError(f"{path}:{number}: not a JSON object ({e})") from None
    if not isinstance(record, dict):
        raise BirnnError(f"{path}:{number}: not a JSON object")
    return record


def _read_folder(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            texts.append(read_text(file))
            labels.append(folder.name)
    if not texts:
        raise BirnnError(f"{path}: no class folders holding .txt files")
    return texts, labels


def truncated(tok: tokenize.Tokenizer, texts: list[str]) -> tuple[list[list[int]], int]:
    """Each text's IDs cut to the tokenizer's ``max_length`` (None: kept whole), and how many were cut."""
    whole = [tok.encode(t) for t in texts]
    cut = [tok.truncated(i) for i in whole]
    return cut, sum(len(w) > len(c) for w, c in zip(whole, cut))


def tokens_in(tok: tokenize.Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The texts as padded IDs (with characters if the tokenizer has them: ``spelled``), their lengths, and how many
    texts ``max_length`` cut."""
    ids, cut = truncated(tok, texts)
    x, lengths = padded(ids)
    if tok.characters is not None:  # an empty text is one <unk> of no characters
        x = spelled(x, [tok.truncated(tok.spelled(tok.words(t)) or [[]]) for t in texts])
    return x, lengths, cut


def padded(ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token IDs (N, longest) zero-padded, and each sample's length; more than ``MAX_PADDED`` IDs is refused."""
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.int64)
    longest = int(lengths.max()) if len(ids) else 0
    if len(ids) * longest > MAX_PADDED:
        raise BirnnError(
            f"padding {len(ids)} samples to the longest ({longest} tokens) takes {len(ids) * longest * 8 / 1e9:.1f} "
            f"GB (at most {MAX_PADDED * 8 / 1e9:.1f}): set data.max_length, or split the longest texts"
        )
    x = torch.zeros(len(ids), longest, dtype=torch.int64)
    for row, i in enumerate(ids):
        x[row, : len(i)] = torch.tensor(i, dtype=torch.int64)
    return x, lengths


def spelled(x: torch.Tensor, spellings: Sequence[list[list[int]]]) -> torch.Tensor:
    """Token IDs ``x`` (N, steps) with each token's character IDs after its ID: (N, steps, 1 + the longest word's
    characters), 0-padded (``model.char_encoder``); ``spellings[i][j]``: token ``j`` of sample ``i``'s characters.
    int32, half the memory of int64 (token IDs stay below ``tokenize.MAX_VOCAB``)."""
    width = max((len(c) for s in spellings for c in s), default=0) or 1
    if x.numel() * (1 + width) > 2 * MAX_PADDED:
        raise BirnnError(
            f"the token and character IDs of {len(x)} samples of {x.shape[1]} tokens of up to {width} characters "
            f"take {x.numel() * (1 + width) * 4 / 1e9:.1f} GB (at most {MAX_PADDED * 8 / 1e9:.1f}): lower "
            "data.max_word_length or data.max_length"
        )
    out = np.zeros((*x.shape, 1 + width), dtype=np.int32)
    out[..., 0] = x.numpy()
    for row, words in enumerate(spellings):
        for step, chars in enumerate(words):
            out[row, step, 1 : 1 + len(chars)] = chars
    return torch.from_numpy(out)


def label_ids(labels: list[str], classes: list[str], where: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    unknown = next((label for label in labels if label not in index), None)
    if unknown is not None:
        raise BirnnError(
            f"{where} has label {unknown!r}, which the training split does not have ({', '.join(classes)})"
        )
    return torch.tensor([index[label] for label in labels], dtype=torch.int64)


def label_values(labels: list[str], where: str) -> torch.Tensor:
    """Labels read as values (``task=regression``), float64; one that is no finite number is an error naming it."""
    values = []
    for i, label in enumerate(labels):
        try:
            value = float(label)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise BirnnError(
                f"{where}: sample {i + 1} has label {label!r}, not a finite number: task=regression reads the label "
                "column as values (train class names with task=classification)"
            )
        values.append(value)
    return torch.tensor(values, dtype=torch.float64)


def check_test_fraction(fraction: float) -> None:
    """``data.test_fraction`` draws the test split (no ``data.test_path``): it must be in (0, 1)."""
    if not 0 < fraction < 1:
        raise BirnnError(f"data.test_fraction must be in (0, 1) when data.test_path is not set, got {fraction}")


def held_out(
    labels: list[str], fraction: float, seed: int, path: str, stratified: bool = True
) -> tuple[list[int], list[int]]:
    """Training and test indices: a ``fraction`` for test, stratified by label unless not ``stratified`` (values),
    drawn with ``seed``."""
    from sklearn.model_selection import train_test_split

    check_test_fraction(fraction)
    strata = labels if stratified else None
    try:
        train, test = train_test_split(range(len(labels)), test_size=fraction, random_state=seed, stratify=strata)
    except ValueError as e:
        raise BirnnError(f"{path}: cannot hold out a stratified data.test_fraction={fraction} ({e})") from None
    return list(train), list(test)


def load_text(
    root: str = "data",
    download: bool = False,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.2,
    test_seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    tokenizer: str = "word",
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
    task: str = "classification",
    max_word_length: int = 20,
    characters: bool = False,
) -> Splits:
    """The texts in ``path`` (and ``test_path``) as token IDs; ``root``/``download`` are unused. A checkpoint's
    tokenizer and classes (``fitted``, ``fitted_classes``) with a ``test_path``: the training texts are not read
    (the training split is empty). ``task="regression"``: the labels are float values (no classes).
    ``characters`` (``model.char_encoder``): each token's characters too, the character vocabulary fitted on the
    training texts (``birnn.data.text.spelled``); a fitted tokenizer brings its own, or none."""
    values = task == "regression"
    if fitted and fitted_classes is not None and test_path:
        path, texts, labels = path or test_path, [], []
    elif not path:
        raise BirnnError("data=text needs the labelled texts: data.path=FILE.csv|.tsv|.jsonl or a folder")
    else:
        texts, labels = read_texts(Path(path), text_column, label_column)
    if values:  # checked in the file's order, before a test fraction is drawn: the message counts its samples
        label_values(labels, path)
    if test_path:
        test_texts, test_labels = read_texts(Path(test_path), text_column, label_column)
    else:
        train, test = held_out(labels, test_fraction, test_seed, path, stratified=not values)
        test_texts, test_labels = [texts[i] for i in test], [labels[i] for i in test]
        texts, labels = [texts[i] for i in train], [labels[i] for i in train]
    if max_length is not None and max_length < 1:
        raise BirnnError(f"data.max_length must be a positive number of tokens or null, got {max_length}")
    pretrained = read_vectors(vectors, vectors_format) if vectors is not None and not fitted else None
    tok = (
        tokenize.from_json(fitted)
        if fitted
        else tokenize.fit(
            texts, tokenizer, vocab_size, min_freq, lowercase, True, unknown, signature_suffixes, pretrained
        )
    )
    tok.max_length = max_length  # kept with the tokenizer: predict --text cuts raw text the same way
    if characters and not fitted:
        tokenize.fit_characters(tok, (w for t in texts for w in tok.words(t)), max_word_length)
    classes = list(fitted_classes) if fitted_classes is not None else [] if values else sorted(set(labels))
    targets = label_values if values else lambda labels, where: label_ids(labels, classes, where)
    train_x, train_lengths, cut = tokens_in(tok, texts)
    test_x, test_lengths, test_cut = tokens_in(tok, test_texts)
    if cut + test_cut:
        log.warning(
            "%d of %d texts are longer than data.max_length=%d tokens: truncated",
            cut + test_cut,
            len(texts) + len(test_texts),
            max_length,
        )
    return Splits(
        train_x,
        targets(labels, path),
        test_x,
        targets(test_labels, test_path or path),
        classes=classes,
        train_lengths=train_lengths,
        test_lengths=test_lengths,
        kind="text",
        vocab_size=tok.size,
        tokenizer=tok.to_json(),
        word_vectors=None if pretrained is None else fitted_table(tok.vocab, pretrained, _words(tok, texts)),
        trained_vocab=tok.trained,
        characters=tok.character_ids,
    )


def _words(tok: tokenize.Tokenizer, texts: list[str]) -> Iterator[str]:
    return (t for text in texts for t in tok.split(text))
