"""Tag a file (``birnn-predict CKPT FILE --out TAGGED``): a CoNLL or slash file's sentences, and the file written
back with one predicted tag per token, every input token and line kept as it was.

``conll``: one token per line; the token is column ``token_column`` (whitespace-separated, as ``data=tagged``
reads it); the predicted tag becomes a new last column (joined with a tab when the line holds one, else a space),
so ``conlleval``-style scorers read gold (the old last column) and prediction (the new one). A blank line ends a
sentence and stays; a ``-DOCSTART-`` line stays and repeats its last column (every line keeps one column count,
which ``conlleval`` requires); a line that starts with ``#`` before a sentence's first token is a comment (CoNLL-U's
``# text = ...``) and stays as it is, unless it has as many columns as the next token line (a token ``#``).

``slash``: one sentence per line. When every token of the file is ``word/tag`` (a gold file, as ``data=tagged
data.format=slash`` reads it) the word is what precedes the last ``/`` and the prediction replaces the tag;
otherwise every token is a word and gets ``/TAG``. The white space between tokens, blank lines and line endings
are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from birnn.data.tagged import FORMATS, SPACE, fields
from birnn.schema.errors import BirnnError
from birnn.system.files import read_text

DOCSTART = "-DOCSTART-"
_PARTS = re.compile(f"({SPACE.pattern})")  # tokens and the white space between them, both kept


@dataclass
class Sentence:
    words: list[str]
    lines: list[int]  # the 0-based line of each word (slash: the sentence's one line, once per word)
    where: str  # file:line of its first token


@dataclass
class TagFile:
    """A file read for tagging: its lines as they were (line endings apart) and its sentences."""

    path: Path
    format: str
    lines: list[str]
    sentences: list[Sentence]
    gold: bool = False  # slash: every token was word/tag (the prediction replaces the tag)

    def tagged(self, tags: list[list[str]]) -> str:
        """The file's text with ``tags[i]`` (one per word) for sentence ``i``."""
        out = list(self.lines)
        for sentence, predicted in zip(self.sentences, tags, strict=True):
            if len(predicted) != len(sentence.words):
                raise BirnnError(f"{sentence.where}: {len(predicted)} tags for {len(sentence.words)} tokens")
            if self.format == "slash":
                out[sentence.lines[0]] = self._slash_line(self.lines[sentence.lines[0]], predicted)
            else:
                for line, tag in zip(sentence.lines, predicted):
                    out[line] = _appended(self.lines[line], tag)
        for i, line in enumerate(self.lines):  # -DOCSTART- lines repeat their last column
            columns = fields(line)
            if self.format == "conll" and columns[:1] == [DOCSTART] and len(columns) > 1:
                out[i] = _appended(line, columns[-1])
        return "\n".join(out)

    def _slash_line(self, line: str, tags: list[str]) -> str:
        body, cr = _split_cr(line)
        parts, tags = _PARTS.split(body), iter(tags)
        for i, part in enumerate(parts):
            if part and not SPACE.fullmatch(part):
                word = part.rpartition("/")[0] if self.gold else part
                parts[i] = f"{word}/{next(tags)}"
        return "".join(parts) + cr


def _split_cr(line: str) -> tuple[str, str]:
    return (line[:-1], "\r") if line.endswith("\r") else (line, "")


def _appended(line: str, tag: str) -> str:
    body, cr = _split_cr(line)
    body = body.rstrip(" \t")
    return body + ("\t" if "\t" in body else " ") + tag + cr


def read_tag_file(path: Path, format: str = "conll", token_column: int = 0, max_length: int | None = None) -> TagFile:
    """The sentences of ``path`` to tag; a line without the token column, or a sentence longer than ``max_length``
    (the model's ``data.max_length``: tagging never truncates), is one error naming file and line."""
    if format not in FORMATS:
        raise BirnnError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    lines = read_text(path).split("\n")
    tag_file = _slash(path, lines) if format == "slash" else _conll(path, lines, token_column)
    if not tag_file.sentences:
        raise BirnnError(f"{path} holds no sentences to tag")
    long = next((s for s in tag_file.sentences if max_length and len(s.words) > max_length), None)
    if long is not None:
        raise BirnnError(
            f"{long.where}: a sentence of {len(long.words)} tokens, longer than the model's data.max_length="
            f"{max_length} (tagging never truncates)"
        )
    return tag_file


def _columns_after(lines: list[str]) -> list[int | None]:
    """Per line, the number of columns of the nearest later line that holds some and does not start with ``#``."""
    after: list[int | None] = [None] * len(lines)
    found = None
    for i in range(len(lines) - 1, -1, -1):
        after[i] = found
        columns = fields(lines[i])
        if columns and not lines[i].startswith("#"):
            found = len(columns)
    return after


def _conll(path: Path, lines: list[str], token_column: int) -> TagFile:
    sentences: list[Sentence] = []
    words: list[str] = []
    at: list[int] = []
    after = _columns_after(lines)
    for i, line in enumerate([*lines, ""]):
        columns = fields(line)
        # before a sentence's first token, a line starting with # is a comment, unless it has as many columns as the
        # next token line (a token '#', as Penn Treebank files have)
        if columns[:1] == [DOCSTART] or (not words and line.startswith("#") and len(columns) != after[i]):
            continue
        if not columns:
            if words:
                sentences.append(Sentence(words, at, f"{path}:{at[0] + 1}"))
            words, at = [], []
            continue
        if not -len(columns) <= token_column < len(columns):
            raise BirnnError(
                f"{path}:{i + 1}: {len(columns)} column(s), but the token is column {token_column} "
                "(--token-column, default the model's data.token_column)"
            )
        words.append(columns[token_column])
        at.append(i)
    return TagFile(path, "conll", lines, sentences)


def _slash(path: Path, lines: list[str]) -> TagFile:
    tokens = [fields(line) for line in lines]
    gold = all(w and s and t for line in tokens for w, s, t in (token.rpartition("/") for token in line))
    sentences = [
        Sentence([t.rpartition("/")[0] if gold else t for t in line], [i] * len(line), f"{path}:{i + 1}")
        for i, line in enumerate(tokens)
        if line
    ]
    return TagFile(path, "slash", lines, sentences, gold)
