"""Tokenizers fitted on a training split (char, word, or BPE through Hugging Face ``tokenizers``), stored as JSON.

ID 0 is ``<pad>`` and ID 1 ``<unk>``. With ``unknown="signature"`` (word tokenizers) a word outside the vocabulary
becomes its signature (``signature``: shape and suffix, e.g. ``<unk-Cap-ing>``) instead of ``<unk>``: the vocabulary
holds the signatures of the training words it leaves out, so their embeddings are learned. A tokenizer travels in a
checkpoint as a JSON string (plain data, never a pickle); ``from_json`` checks its size and shape before use, so a
crafted one runs no code and an absurd one is refused with one line.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from birnn.schema.config import SIGNATURE_SUFFIXES
from birnn.schema.errors import BirnnError
from birnn.system.files import loads_json

if TYPE_CHECKING:
    from birnn.data.vectors import Vectors

PAD, UNK = "<pad>", "<unk>"
KINDS = ("char", "word", "bpe")
WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation mark
MAX_JSON_CHARS = 128 * 2**20  # a stored tokenizer beyond 128 MiB is not one birnn wrote
# token IDs a tokenizer holds (with data.vectors, up to 4 M pretrained words beside the training ones): fit refuses
# more, from_json too (the same limit at both ends)
MAX_VOCAB = 6_000_000
MAX_TOKEN_CHARS = 1_000  # characters of one vocabulary entry: likewise
UNKNOWN = ("unk", "signature")
# model.char_encoder: distinct characters a tokenizer holds (fit keeps the most frequent, from_json refuses more) and
# characters of one word (data.max_word_length)
MAX_CHARACTERS, MAX_WORD_LENGTH = 65_536, 1_000
MAX_SUFFIXES, MAX_SUFFIX_CHARS = 100, 20


def signature(word: str, suffixes: Sequence[str]) -> str:
    """The token standing for an unknown ``word``, from its surface form (before lower-casing): ``<unk`` then
    ``-Caps`` (two or more letters, all upper-case) or ``-Cap`` (the first character upper-case), ``-num`` (a
    digit), ``-dash`` (a hyphen), and the longest of ``suffixes`` that the lower-cased word ends with, if the word
    is at least two characters longer; then ``>``. A word with none of these is ``<unk>``."""
    letters = [c for c in word if c.isalpha()]
    parts = ["unk"]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        parts.append("Caps")
    elif word[:1].isupper():
        parts.append("Cap")
    if any(c.isdigit() for c in word):
        parts.append("num")
    if "-" in word:
        parts.append("dash")
    lower = word.lower()
    ending = [s for s in suffixes if len(lower) >= len(s) + 2 and lower.endswith(s)]
    if ending:
        parts.append(max(ending, key=len))
    return f"<{'-'.join(parts)}>"


def check_unknown(unknown: object, suffixes: object, kind: object, what: str) -> None:
    """``unknown`` is ``unk`` or ``signature`` (word tokenizers only), ``suffixes`` a short list of short strings;
    ``what`` names the source in the message (``data.`` for the config, the stored tokenizer's for a checkpoint)."""
    if unknown not in UNKNOWN:
        raise BirnnError(f"{what}unknown must be one of {', '.join(UNKNOWN)}; got {unknown!r}")
    if unknown == "signature" and kind != "word":
        raise BirnnError(f"{what}unknown=signature needs a word tokenizer, not {kind!r}")
    if not (
        isinstance(suffixes, list)
        and len(suffixes) <= MAX_SUFFIXES
        and all(isinstance(s, str) and 0 < len(s) <= MAX_SUFFIX_CHARS for s in suffixes)
    ):
        raise BirnnError(
            f"{what}signature_suffixes must be a list of at most {MAX_SUFFIXES} non-empty strings of at most "
            f"{MAX_SUFFIX_CHARS} characters: refused"
        )


@dataclass
class Tokenizer:
    """Text -> token IDs. ``vocab[i]`` is the token of ID ``i`` (char, word); ``bpe`` is the Hugging Face
    tokenizer's own JSON (its vocabulary holds ``<pad>`` = 0 and ``<unk>`` = 1 too)."""

    kind: str
    lowercase: bool = False
    vocab: list[str] = field(default_factory=lambda: [PAD, UNK])
    bpe: str | None = None
    unknown: str = "unk"  # unk | signature: what a word outside the vocabulary becomes
    suffixes: list[str] = field(default_factory=list)  # the signatures' suffixes (unknown=signature)
    max_length: int | None = None  # a text's IDs are cut to this many (data.max_length of data=text)
    # data.vectors: IDs below this are the training split's tokens (their embeddings train); the rest are words only
    # the pretrained vectors hold (frozen). None: every ID trains.
    trained: int | None = None
    # model.char_encoder (word tokenizers): the training split's characters, most frequent first (character ID i + 2;
    # 0 pads, 1 is any other character), and the characters of a word kept (data.max_word_length). None: no characters.
    characters: list[str] | None = None
    max_word_length: int | None = None

    def __post_init__(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.vocab)}
        self._chars = {c: i for i, c in enumerate(self.characters or (), 2)}
        self._bpe = None
        if self.bpe is not None:
            try:
                from tokenizers import Tokenizer as HFTokenizer
            except ImportError:
                raise BirnnError(
                    "this BPE tokenizer needs Hugging Face tokenizers, which is not installed: "
                    "pip install 'birnn[text]'"
                ) from None
            try:
                self._bpe = HFTokenizer.from_str(self.bpe)
            except Exception as e:  # the Rust library's errors (malformed JSON, unknown model, ...)
                raise BirnnError(f"the stored BPE tokenizer cannot be read: {str(e).splitlines()[0]}") from None

    @property
    def size(self) -> int:
        """The number of token IDs (the embedding's rows)."""
        return self._bpe.get_vocab_size() if self._bpe is not None else len(self.vocab)

    def split(self, text: str) -> list[str]:
        """The tokens of ``text`` (char and word; BPE splits inside ``encode``). With signatures, as written (``ids``
        lower-cases each after reading its shape)."""
        text = text.lower() if self.lowercase and self.unknown == "unk" else text
        return list(text) if self.kind == "char" else WORD.findall(text)

    def encode(self, text: str) -> list[int]:
        """Token IDs of ``text``, whole (``truncated`` cuts them): unknown tokens become ``<unk>``; an empty text is
        one ``<unk>``."""
        if self._bpe is not None:
            ids = self._bpe.encode(text.lower() if self.lowercase else text).ids
        else:  # with characters: the words as written, whose characters go beside their IDs
            ids = self.ids(self.split(text) if self.characters is None else self.words(text))
        return ids or [1]

    def truncated(self, ids: list[int]) -> list[int]:
        """``ids`` cut to ``max_length`` (None: whole)."""
        return ids[: self.max_length or None]

    def cased(self, tokens: Iterable[str]) -> list[str]:
        """Already split tokens (``data=tagged``) as the vocabulary holds them: lower-cased when the tokenizer is."""
        return [t.lower() for t in tokens] if self.lowercase else list(tokens)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """IDs of already split tokens; unknown ones are ``<unk>``, or their signature's if the vocabulary has it."""
        tokens = list(tokens)
        fallback = [1] * len(tokens)
        if self.unknown == "signature":
            fallback = [self._ids.get(signature(t, self.suffixes), 1) for t in tokens]
        if self.trained is None:
            return [self._ids.get(c, f) for c, f in zip(self.cased(tokens), fallback)]
        # pretrained words: looked up as written, then lower-cased (GloVe's words are lower-case)
        return [self._ids.get(c, self._ids.get(c.lower(), f)) for c, f in zip(self.cased(tokens), fallback)]

    @property
    def character_ids(self) -> int | None:
        """The number of character IDs (padding and unknown included), None without characters."""
        return None if self.characters is None else len(self.characters) + 2

    def words(self, text: str) -> list[str]:
        """The words of raw ``text`` as written (before lower-casing), for their characters; ``ids`` reads them as
        ``encode`` would."""
        return WORD.findall(text)

    def spelled(self, tokens: Iterable[str]) -> list[list[int]]:
        """Each token's character IDs from its spelling as written, its first ``max_word_length`` characters."""
        return [[self._chars.get(c, 1) for c in t[: self.max_word_length]] for t in tokens]

    def to_json(self) -> str:
        data = {"kind": self.kind, "lowercase": self.lowercase, "vocab": self.vocab, "bpe": self.bpe}
        if self.characters is not None:  # nor one without characters
            data |= {"characters": self.characters, "max_word_length": self.max_word_length}
        if self.unknown != "unk":  # a tokenizer without signatures is stored as before they existed
            data |= {"unknown": self.unknown, "suffixes": self.suffixes}
        if self.max_length is not None:  # nor one that keeps texts whole
            data |= {"max_length": self.max_length}
        if self.trained is not None:  # nor one without pretrained vectors
            data |= {"trained": self.trained}
        return json.dumps(data)


def fit(
    texts: Iterable[str],
    kind: str = "word",
    vocab_size: int | None = None,
    min_freq: int = 1,
    lowercase: bool = False,
    split: bool = True,
    unknown: str = "unk",
    suffixes: Sequence[str] = SIGNATURE_SUFFIXES,
    vectors: Vectors | None = None,
) -> Tokenizer:
    """A tokenizer fitted on ``texts`` (the training split only): the ``vocab_size`` most frequent tokens seen at
    least ``min_freq`` times (ties by first appearance), ``<pad>`` and ``<unk>`` included. ``split`` False: each
    item of ``texts`` is a list of tokens already. ``unknown="signature"``: then the signatures of the training words
    left out (rarer than ``min_freq`` or beyond ``vocab_size``), most frequent first, on top of ``vocab_size``.

    ``vectors`` (word tokenizers): a token with a pretrained vector is kept however rare; after the training
    tokens (``trained`` of them) come the vectors' other words, so that a word training never saw keeps its vector."""
    if kind not in KINDS:
        raise BirnnError(f"data.tokenizer must be one of {', '.join(KINDS)}; got {kind!r}")
    if vocab_size is not None and not 3 <= vocab_size <= MAX_VOCAB:
        raise BirnnError(
            f"data.vocab_size must be in 3..{MAX_VOCAB} (<pad>, <unk> and the tokens; a stored tokenizer holds at "
            f"most {MAX_VOCAB}) or null, got {vocab_size}"
        )
    suffixes = list(suffixes) if unknown == "signature" else []
    check_unknown(unknown, suffixes, kind, "data.")
    if kind == "bpe":
        return _fit_bpe(texts, vocab_size, min_freq, lowercase)
    tokenizer = Tokenizer(kind, lowercase, unknown=unknown, suffixes=suffixes)
    surface = Counter(t for item in texts for t in (tokenizer.split(item) if split else item))
    counts: Counter[str] = Counter()
    for token, n in surface.items():  # first appearances stay in order: ties keep breaking the same way
        counts[token.lower() if lowercase else token] += n
    has_vector = (lambda t: vectors.lookup(t) is not None) if vectors is not None else (lambda t: False)
    kept = [t for t, n in counts.most_common() if (n >= min_freq or has_vector(t)) and t not in (PAD, UNK)]
    vocab = [PAD, UNK, *kept[: None if vocab_size is None else vocab_size - 2]]
    if unknown == "signature":
        known = set(vocab)
        left_out: Counter[str] = Counter()
        for token, n in surface.items():
            if (token.lower() if lowercase else token) not in known:
                left_out[signature(token, suffixes)] += n
        vocab += [s for s, _ in left_out.most_common() if s not in known]
    trained = None
    if vectors is not None:
        if kind != "word":
            raise BirnnError(f"data.vectors needs the word tokenizer (data.tokenizer=word), not {kind}")
        trained, known = len(vocab), set(vocab)
        for word in vectors.words:  # most frequent first, as vectors files are ordered
            key = word.lower() if lowercase else word
            if key not in known:
                known.add(key)
                vocab.append(key)
    check_fitted(vocab, min_freq)
    return Tokenizer(kind, lowercase, vocab, unknown=unknown, suffixes=suffixes, trained=trained)


def fit_characters(tokenizer: Tokenizer, tokens: Iterable[str], max_word_length: object) -> None:
    """Give the word ``tokenizer`` the characters of the training split's ``tokens`` (as written): the
    ``MAX_CHARACTERS - 2`` most frequent (ties by first appearance); rarer ones share the unknown ID."""
    if tokenizer.kind != "word":
        raise BirnnError(
            f"model.char_encoder reads the characters of words: it needs data.tokenizer=word, not {tokenizer.kind}"
        )
    check_word_length(max_word_length, "data.")
    counts = Counter(c for t in tokens for c in t)
    tokenizer.characters = [c for c, _ in counts.most_common(MAX_CHARACTERS - 2)]
    tokenizer.max_word_length = max_word_length
    tokenizer._chars = {c: i for i, c in enumerate(tokenizer.characters, 2)}


def check_word_length(max_word_length: object, what: str) -> None:
    if type(max_word_length) is not int or not 1 <= max_word_length <= MAX_WORD_LENGTH:
        raise BirnnError(f"{what}max_word_length must be in 1..{MAX_WORD_LENGTH}, got {max_word_length!r}")


def _check_characters(data: dict) -> None:
    """A stored tokenizer's characters: absent, or at most ``MAX_CHARACTERS - 2`` distinct single characters with
    ``max_word_length``, as ``fit_characters`` writes them."""
    characters = data.get("characters")
    if characters is None:
        return
    if (
        data["kind"] != "word"
        or not isinstance(characters, list)
        or len(characters) > MAX_CHARACTERS - 2
        or not all(isinstance(c, str) and len(c) == 1 for c in characters)
        or len(set(characters)) != len(characters)
    ):
        raise BirnnError(
            f"the stored tokenizer's characters must be at most {MAX_CHARACTERS - 2} distinct single characters "
            "(word kind): refused"
        )
    check_word_length(data.get("max_word_length"), "the stored tokenizer's ")


def check_fitted(vocab: list[str], min_freq: int) -> None:
    """Refuse, when training starts, a vocabulary that ``from_json`` would refuse to load from the checkpoint:
    more than ``MAX_VOCAB`` tokens, or one longer than ``MAX_TOKEN_CHARS`` characters."""
    if len(vocab) > MAX_VOCAB:
        raise BirnnError(
            f"the vocabulary holds {len(vocab)} tokens (those seen at least data.min_freq={min_freq} times, "
            f"signatures and data.vectors' words included), more than a tokenizer holds ({MAX_VOCAB}): set "
            "data.vocab_size or raise data.min_freq"
        )
    long = next((t for t in vocab if len(t) > MAX_TOKEN_CHARS), None)
    if long is not None:
        raise BirnnError(
            f"the vocabulary holds a token of {len(long)} characters ({long[:20]!r}...), longer than a tokenizer "
            f"holds ({MAX_TOKEN_CHARS}): clean the texts, or raise data.min_freq (or lower data.vocab_size) to leave "
            "rare tokens out"
        )


def _fit_bpe(texts: Iterable[str], vocab_size: int | None, min_freq: int, lowercase: bool) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers
    except ImportError:
        raise BirnnError("data.tokenizer=bpe needs Hugging Face tokenizers: pip install 'birnn[text]'") from None
    hf = HFTokenizer(models.BPE(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size or 8000, min_frequency=min_freq, special_tokens=[PAD, UNK], show_progress=False
    )
    hf.train_from_iterator((t.lower() if lowercase else t for t in texts), trainer)
    return Tokenizer("bpe", lowercase, [PAD, UNK], hf.to_str())


def from_json(text: object) -> Tokenizer:
    """The tokenizer a checkpoint stores, checked: plain JSON of the expected shape and of sane size."""
    if not isinstance(text, str):
        raise BirnnError(f"the stored tokenizer is a {type(text).__name__}, not a JSON string")
    if len(text) > MAX_JSON_CHARS:
        raise BirnnError(f"the stored tokenizer is {len(text)} characters long (at most {MAX_JSON_CHARS}): refused")
    try:
        data = loads_json(text)
    except ValueError as e:
        raise BirnnError(f"the stored tokenizer is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("lowercase"), bool):
        raise BirnnError("the stored tokenizer lacks its kind (char, word, bpe) or lowercase flag")
    vocab, bpe = data.get("vocab"), data.get("bpe")
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab) or vocab[:2] != [PAD, UNK]:
        raise BirnnError("the stored tokenizer's vocab must be a list of strings starting with <pad>, <unk>")
    if len(vocab) > MAX_VOCAB or any(len(t) > MAX_TOKEN_CHARS for t in vocab):
        raise BirnnError(
            f"the stored tokenizer holds {len(vocab)} tokens, up to {max(map(len, vocab))} characters each "
            f"(at most {MAX_VOCAB} of {MAX_TOKEN_CHARS}): refused"
        )
    if (bpe is None) != (data["kind"] != "bpe") or (bpe is not None and not isinstance(bpe, str)):
        raise BirnnError("the stored tokenizer's BPE model must be a JSON string for kind bpe, null otherwise")
    if bpe is not None:
        check_bpe(bpe)
    unknown, suffixes = data.get("unknown", "unk"), data.get("suffixes", [])  # absent: stored before signatures
    check_unknown(unknown, suffixes, data["kind"], "the stored tokenizer's ")
    max_length = data.get("max_length")  # absent: stored before it was kept, or texts kept whole
    if max_length is not None and (type(max_length) is not int or max_length < 1):
        raise BirnnError(f"the stored tokenizer's max_length must be a positive integer or absent, got {max_length!r}")
    trained = data.get("trained")  # absent: stored without pretrained vectors
    if trained is not None and (type(trained) is not int or not 2 <= trained <= len(vocab) or data["kind"] != "word"):
        raise BirnnError(
            f"the stored tokenizer's trained count must be in 2..{len(vocab)} (word kind), got {trained!r}"
        )
    _check_characters(data)
    tokenizer = Tokenizer(
        data["kind"],
        data["lowercase"],
        vocab,
        bpe,
        unknown,
        suffixes,
        max_length,
        trained,
        data.get("characters"),
        data.get("max_word_length"),
    )
    if tokenizer.size > MAX_VOCAB:
        raise BirnnError(f"the stored BPE tokenizer has {tokenizer.size} tokens (at most {MAX_VOCAB}): refused")
    return tokenizer


# What ``_fit_bpe`` writes, and all a stored BPE tokenizer may be: no padding or truncation of its own (a crafted
# ``Fixed 600000`` padding hangs predict), no normalizer or post-processor, the Whitespace pre-tokenizer (a crafted
# ``Split`` regex can panic the Rust library), a plain BPE model whose IDs are 0..n-1, <pad> = 0 and <unk> = 1.
BPE_NULL = ("truncation", "padding", "normalizer", "post_processor", "decoder")
BPE_KEYS = {"version", "added_tokens", "pre_tokenizer", "model", *BPE_NULL}
BPE_MODEL = {"type": "BPE", "dropout": None, "unk_token": UNK, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "byte_fallback": False}  # fmt: skip


def check_bpe(text: str) -> None:
    """Refuse a stored Hugging Face tokenizer that is not one ``_fit_bpe`` could have written (see ``BPE_MODEL``)."""
    try:
        data = loads_json(text)
    except ValueError as e:
        raise BirnnError(f"the stored BPE tokenizer cannot be read: not valid JSON ({e})") from None
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict) or not isinstance(model.get("merges", []), list):
        raise BirnnError("the stored BPE tokenizer has no BPE model with a vocabulary: refused")
    wrong = [k for k in data if k not in BPE_KEYS]
    wrong += [k for k in BPE_NULL if data.get(k) is not None]
    wrong += [] if data.get("pre_tokenizer") == {"type": "Whitespace"} else ["pre_tokenizer"]
    wrong += [f"model.{k}" for k, v in BPE_MODEL.items() if model.get(k, v) != v]
    ids = sorted(i for i in vocab.values() if type(i) is int)
    if ids != list(range(len(vocab))) or vocab.get(PAD) != 0 or vocab.get(UNK) != 1:
        wrong.append("model.vocab (IDs 0..n-1, <pad> = 0, <unk> = 1)")
    added = data.get("added_tokens", [])
    if not isinstance(added, list) or any(
        not isinstance(t, dict) or t.get("content") not in (PAD, UNK) or t.get("id") != vocab.get(t["content"])
        for t in added
    ):
        wrong.append("added_tokens (only <pad> and <unk>)")
    if wrong:
        raise BirnnError(
            f"the stored BPE tokenizer sets {', '.join(wrong)}, which birnn never writes "
            "(it uses none of its own padding, truncation, normalizer or regex, only Whitespace and BPE): refused"
        )
