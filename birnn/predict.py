"""``python -m birnn.predict CKPT PATH [PATH ...] [--json]``: classify image, array or series files with a model, or
predict their values (a model trained with ``task=regression``).

A model trained on text (``data=text``, ``data=tagged``) reads raw text instead: ``--text "..."`` (repeatable) or
``.txt`` files, one sample per line, tokenized with the tokenizer stored in the checkpoint (truncated to
``data.max_length`` like the training texts); a tagger prints each token with its tag. A word tokenizer splits raw
text into runs of letters and digits and single punctuation marks (``Atlanta's`` is ``Atlanta ' s``), which need
not be how a CoNLL file was split: ``--tokens "..."`` (repeatable) takes text already split into tokens, on
whitespace only (word tokenizers). ``PATH --out FILE`` tags a CoNLL or slash file token by token, as it is split,
and writes it with the predicted tags (``birnn.data.tagfile``).

Each image (PNG or JPEG, any size; a folder stands for the files in it) becomes one input the way the
training data looks: grayscale, area-resized to the data's (steps x features) shape, scaled to [0, 1],
light on dark. Dark-on-light scans are inverted (``--invert auto`` decides from the image border). A
``.npy`` file is one sample ``(steps, features)`` as the data gives it; a ``.ts`` file (the UCR/UEA archive
format) holds many series, each one input whose record carries its ``index``. Inputs are standardized with
the checkpoint's statistics when it was trained with ``data.normalize`` (each series z-normalized on its own first
with ``data.normalize_series``), then read k steps at a time when it
was trained with ``data.patch=k``: give the series exactly as the data holds them. A model trained on one label
per step (``data=arrays`` with ``y`` of shape ``(N, steps)``) gives a tag per step (``tags``; ``label``: the tags).
What each input's answer holds is the kind of target's (``Target.answers``): a regression model gives ``value`` in
the target's own units (the training scaling inverted, ``expm1`` with ``task.log_target``): a number, a list of
``d``, or one per step; ``label`` is what the table prints, ``probability`` is null.
"""

from __future__ import annotations

from birnn.schema.importpath import drop_cwd

drop_cwd(__name__)  # python -m put the working directory first on sys.path: off it, before anything imports

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from birnn.data import tokenize
from birnn.data.normalize import apply as standardize
from birnn.data.normalize import per_series
from birnn.data.patches import patch
from birnn.data.tagfile import TagFile, read_tag_file
from birnn.data.text import spelled
from birnn.data.uea import read_series
from birnn.engine.restore import Restored, add_trust_options, restore, user_errors
from birnn.engine.signals import stopped_in_one_line
from birnn.schema import console
from birnn.schema.config import DEVICES, DeviceConfig
from birnn.schema.errors import BirnnError
from birnn.system import threads
from birnn.system.device import setup_device
from birnn.system.files import Unreadable, atomic_write, not_regular, read_text
from birnn.system.files import lines as text_lines

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SERIES_SUFFIXES = (".ts",)
CONLL_SUFFIXES = (".conll", ".conllu", ".conllx")  # --out: such a file is CoNLL whatever the tagger was trained on
INPUT_SUFFIXES = IMAGE_SUFFIXES + ARRAY_SUFFIXES + SERIES_SUFFIXES
MAX_STEPS = 10_000_000  # a variable-length .npy beyond this is refused before loading
FAR = 10.0  # standard deviations from the training mean beyond which an input gets a warning


class UnreadableInput(ValueError):
    """A file that cannot become an input; its message is the whole explanation."""


def image_files(paths: Sequence[Path]) -> list[tuple[Path, str | None]]:
    """Each PATH as ``(file, None)``; a folder expands to its input files, sorted, or to ``(folder, error)``."""
    files: list[tuple[Path, str | None]] = []
    for path in paths:
        if not path.is_dir():
            files.append((path, None))
            continue
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        files += [(p, None) for p in found] or [(path, f"no {'/'.join(INPUT_SUFFIXES)} files in this folder")]
    return files


def load_image(path: Path, shape: tuple[int, int], invert: str = "auto") -> torch.Tensor:
    """One image as a (steps, features) float tensor in [0, 1], light on dark like the training data.

    Transparent pixels count as white paper. ``invert``: ``yes``, ``no``, or ``auto`` (invert when the
    one-pixel border is brighter than mid-gray on average, i.e. a dark-on-light scan).
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if "A" in image.getbands() or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        gray = image.convert("L")
    steps, features = shape
    pixels = np.asarray(gray.convert("F").resize((features, steps), Image.Resampling.BOX)) / 255
    full = np.asarray(gray)
    border = np.concatenate([full[0], full[-1], full[:, 0], full[:, -1]]).mean() / 255
    if invert == "yes" or (invert == "auto" and border > 0.5):
        pixels = 1 - pixels
    return torch.from_numpy(pixels.astype(np.float32)).clamp_(0, 1)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """A ``.npy`` file's shape and dtype from its header, before any data is read (or allocated)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = read(f)
    return shape, dtype


def load_array(path: Path, features: int, steps: int | None) -> torch.Tensor:
    """One sample from a ``.npy`` file: numbers shaped (steps, features); ``steps`` None allows any length.

    The header is checked first: a file claiming a huge shape is refused without allocating it."""
    expected = f"({steps if steps is not None else 'steps'}, {features})"
    try:
        shape, dtype = _npy_header(path)
        if dtype.kind not in "fiu":
            raise UnreadableInput(f"dtype {dtype}: expected numbers shaped {expected}")
        if (
            len(shape) != 2
            or shape[1] != features
            or (steps is not None and shape[0] != steps)
            or not 0 < shape[0] <= MAX_STEPS
        ):
            raise UnreadableInput(f"shape {shape}: the model takes one sample shaped {expected}")
        array = np.load(path, allow_pickle=False)
    except UnreadableInput:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UnreadableInput(f"not a readable .npy array ({e or type(e).__name__})") from None
    if array.shape != shape:
        raise UnreadableInput(f"not a readable .npy array (its data does not match its header's shape {shape})")
    x = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(x).all():
        raise UnreadableInput("holds NaN, inf or values beyond float32's range")
    return x


def load_inputs(path: Path, restored: Restored, invert: str) -> list[torch.Tensor]:
    """The raw inputs (steps, features) of a file, by its suffix: every series of a ``.ts`` file, one ``.npy``
    array, else one image. A file whose kind or shape does not fit the checkpoint's data is refused."""
    steps, features = restored.input_shape
    suffix = path.suffix.lower()
    kind, length = restored.spec.get("kind", "image"), restored.spec.get("max_length", steps)
    if not path.is_file():
        raise UnreadableInput("No such file or directory" if not path.exists() else "not a regular file")
    if suffix in SERIES_SUFFIXES:
        if kind == "image":
            raise UnreadableInput("a .ts series file, but this model was trained on images (give PNG/JPEG or .npy)")
        series = read_series(path, features, restored.normalization, restored.normalize_series)
        wrong = next((i for i, x in enumerate(series) if length is not None and len(x) != length), None)
        if wrong is not None:
            raise UnreadableInput(f"series {wrong} has {len(series[wrong])} steps; the model takes {length}")
        bad = next((i for i, x in enumerate(series) if not torch.isfinite(x).all()), None)
        if bad is not None:
            raise UnreadableInput(f"series {bad} holds inf or values beyond float32's range")
        return series
    if suffix in ARRAY_SUFFIXES:
        return [load_array(path, features, length)]
    if kind != "image":
        raise UnreadableInput(f"an image, but this model was trained on {kind} data (give .npy or .ts files)")
    return [load_image(path, restored.input_shape, invert)]


def prepared(x: torch.Tensor, restored: Restored) -> torch.Tensor:
    """A raw input (steps, features) as the model's training inputs were: z-normalized on its own
    (``data.normalize_series``), then standardized with the training statistics (``data.normalize``)."""
    if restored.normalize_series:
        x = per_series(x[None])[0]
    if restored.normalization:
        x = standardize(x, restored.normalization)
    return x


def out_of_range(x: torch.Tensor, restored: Restored) -> str | None:
    """A warning when an input lies far outside what the model saw in training, else None."""
    if restored.normalization:
        z = prepared(x, restored).abs().max().item()
        return f"values up to {z:.0f} standard deviations from the training mean" if z > FAR else None
    if restored.spec.get("kind", "image") == "image" and (x.min() < -1 or x.max() > 2):
        return f"values in [{x.min():.3g}, {x.max():.3g}], but the model was trained on [0, 1]"
    return None


def predict(
    checkpoint: Path | Restored,
    paths: Sequence[Path],
    invert: str = "auto",
    device: str = "cpu",
    allow: Sequence[str] = (),
    unverified: bool = False,
) -> list[dict]:
    """Per input ``{file, prediction, label, probability}`` (series of a ``.ts`` file also ``index``), or
    ``{file, error}`` when a file cannot be read. ``checkpoint``: its path, or the checkpoint already restored."""
    restored = checkpoint if isinstance(checkpoint, Restored) else restore(checkpoint, (), allow, unverified)
    target = setup_device(OmegaConf.structured(DeviceConfig(type=device)))
    results, inputs = [], []
    for path, error in image_files(paths):
        found: list[torch.Tensor] = []
        if error is None:
            try:
                found = load_inputs(path, restored, invert)
            except (BirnnError, UnreadableInput) as e:
                error = str(e)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                error = getattr(e, "strerror", None) or f"not a readable image ({e or type(e).__name__})"
        if error:
            results.append({"file": str(path), "error": error})
        elif path.suffix.lower() in SERIES_SUFFIXES:  # many series: each record says which
            results += [{"file": str(path), "index": i} for i in range(len(found))]
        else:
            results.append({"file": str(path)})
        for record, x in zip(results[len(results) - len(found) :], found):
            warning = out_of_range(x, restored) if path.suffix.lower() in ARRAY_SUFFIXES else None
            if warning:
                record["warning"] = warning
        inputs += found
    if inputs:
        inputs = [patch(prepared(x, restored)[None], restored.patch)[0] for x in inputs]
        kind, model = restored.target, restored.model.to(target)
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(inputs)  # per input: (classes) or (steps, classes)
        with torch.inference_mode():
            for shape in {x.shape for x in inputs}:  # one batch per length (variable-length data)
                index = [i for i, x in enumerate(inputs) if x.shape == shape]
                batch = torch.stack([inputs[i] for i in index]).to(target)
                for i, out in zip(index, model(batch).float().cpu()):
                    outputs[i] = out
        ok = (r for r in results if "error" not in r)
        for r, out in zip(ok, outputs):
            r.update(kind.answers(model, out[None])[0])
    return results


def text_model(checkpoint: Path, allow: Sequence[str] = (), unverified: bool = False) -> Restored:
    """A checkpoint trained on text, restored; its tokenizer must make no more token IDs than the model embeds."""
    restored = restore(checkpoint, allow=allow, unverified=unverified)
    if restored.tokenizer is None:
        raise BirnnError(f"{checkpoint} was not trained on text (data=text or data=tagged): give files, not --text")
    tok = tokenize.from_json(restored.tokenizer)
    embedding = getattr(restored.model, "embedding", None)
    pretrained = getattr(restored.model, "pretrained", None)  # data.vectors' words beyond the trained rows
    rows = (
        embedding.num_embeddings + (0 if pretrained is None else len(pretrained))
        if isinstance(embedding, torch.nn.Embedding)
        else restored.spec.get("vocab_size")
    )
    if rows is not None and tok.size > rows:
        raise BirnnError(
            f"{checkpoint}: its tokenizer makes {tok.size} token IDs, but the model embeds only {rows}: refused"
        )
    characters = getattr(restored.model, "characters", None)
    if tok.character_ids != (None if characters is None else characters.embedding.num_embeddings):
        raise BirnnError(f"{checkpoint}: its tokenizer's characters are not those its model reads: refused")
    return restored


def _answer(
    restored: Restored, tok: tokenize.Tokenizer, target: torch.device, text: str, tokens: list[str] | None = None
) -> dict:
    """The model's answer for one raw ``text`` (split by the tokenizer), or for ``tokens`` already split; with
    character features (``model.char_encoder``) each token's characters as written."""
    kind, model, words = restored.target, restored.model, tokens
    tokens = tok.split(text) if tokens is None and kind.per_step else tokens
    ids = (tok.ids(tokens) or [1]) if tokens is not None else tok.encode(text)
    ids = ids if kind.per_step else tok.truncated(ids)
    x = torch.tensor([ids])
    if tok.characters is not None:
        x = spelled(x, [tok.spelled(words if words is not None else tok.words(text))[: len(ids)] or [[]]])
    with torch.inference_mode():
        logits = model(x.to(target)).float().cpu()
    return kind.answers(model, logits, None if tokens is None else [tokens])[0]


def predict_texts(
    checkpoint: Path | Restored,
    paths: Sequence[Path],
    texts: Sequence[str],
    device: str = "cpu",
    allow: Sequence[str] = (),
    unverified: bool = False,
    pretokenized: Sequence[str] = (),
) -> list[dict]:
    """Per text (each ``--text``, each line of each file, each ``pretokenized`` text: tokens split on whitespace
    only) ``{file, index, text, prediction, label, probability}`` (a tagger: ``label`` is ``token/TAG ...``,
    ``tags`` the list), or ``{file, error}`` for an unreadable file. ``checkpoint``: its path, or the checkpoint
    ``text_model`` restored."""
    restored = checkpoint if isinstance(checkpoint, Restored) else text_model(checkpoint, allow, unverified)
    tok = tokenize.from_json(restored.tokenizer)
    if pretokenized and tok.kind != "word":
        raise BirnnError(f"--tokens gives words: {restored.path} reads {tok.kind} tokens (use --text)")
    target = setup_device(OmegaConf.structured(DeviceConfig(type=device)))
    restored.model.to(target)
    records: list[dict] = [{"file": "--text", "index": i, "text": t} for i, t in enumerate(texts)]
    records += [{"file": "--tokens", "index": i, "text": t} for i, t in enumerate(pretokenized)]
    for path in paths:
        try:
            lines = text_lines(read_text(path))
        except Unreadable as e:
            records.append({"file": str(path), "error": e.reason})
            continue
        records += [{"file": str(path), "index": i, "text": t} for i, t in enumerate(lines) if t.strip()]
    for r in (r for r in records if "error" not in r):
        r.update(_answer(restored, tok, target, r["text"], r["text"].split() if r["file"] == "--tokens" else None))
    return records


def check_out(out: Path, path: Path) -> None:
    """``--out`` may be ``-`` (standard output), a new file, or a regular file other than the input (replaced, as
    ``birnn-evaluate --out`` and ``birnn-export --out`` replace theirs); a FIFO, device or folder is refused."""
    if str(out) == "-" or not (out.exists() or out.is_symlink()):
        return
    if (reason := not_regular(out)) is not None:
        raise BirnnError(f"--out {out}: {reason}: give a file to write, or - for standard output")
    if path.exists() and out.samefile(path):
        raise BirnnError(f"--out {out} is the file to tag: write the tagged file elsewhere")


def tag_file(
    checkpoint: Path,
    path: Path,
    out: Path,
    fmt: str | None = None,
    token_column: int | None = None,
    device: str = "cpu",
    allow: Sequence[str] = (),
    unverified: bool = False,
) -> tuple[TagFile, list[list[str]]]:
    """Tag every sentence of the CoNLL or slash file ``path`` (``fmt`` and ``token_column``: the checkpoint's
    ``data.format`` and ``data.token_column`` unless given; a ``.conll``/``.conllu``/``.conllx`` file is CoNLL) and
    write it to ``out`` (``-``: standard output) with the predicted tags (``birnn.data.tagfile``); the file read and
    each sentence's tags."""
    check_out(out, path)
    restored = text_model(checkpoint, allow, unverified)
    tok, kind = tokenize.from_json(restored.tokenizer), restored.target
    if not kind.per_step or tok.kind != "word":
        what = "classifies whole texts" if not kind.per_step else f"reads {tok.kind} tokens"
        raise BirnnError(f"--out writes a tag per token of a file: {checkpoint} {what} (a tagger of data=tagged does)")
    data = restored.cfg.data
    fmt = fmt or ("conll" if path.suffix.lower() in CONLL_SUFFIXES else data.get("format", "conll"))
    column = data.get("token_column", 0) if token_column is None else token_column
    tag_file = read_tag_file(path, fmt, column, data.get("max_length"))
    target = setup_device(OmegaConf.structured(DeviceConfig(type=device)))
    restored.model.to(target)
    tags = [_answer(restored, tok, target, "", s.words)["tags"] for s in tag_file.sentences]
    text = tag_file.tagged(tags)
    if str(out) == "-":
        sys.stdout.write(text)
        return tag_file, tags
    try:
        atomic_write(out, lambda f: f.write(text.encode()))
    except OSError as e:
        raise BirnnError(f"Could not write {out}: {e.strerror or e}") from None
    return tag_file, tags


def _name(result: dict) -> str:
    """A result's input: its file, and for a series of a ``.ts`` file also its index, ``file[index]``."""
    return f"{result['file']}[{result['index']}]" if "index" in result else result["file"]


def show(results: list[dict], as_json: bool) -> None:
    """One JSON array on stdout (class index ``prediction`` and name ``label``), or a table of the predicted class
    names on stdout and one ``error:`` line per unreadable file on stderr."""
    if as_json:
        print(json.dumps(results, indent=2))
        return
    classified = [r for r in results if "error" not in r]
    width = max((len(_name(r)) for r in classified), default=4)
    label_width = max([len("prediction"), *(len(r["label"]) for r in classified)])
    if classified:  # the class's name only: an index beside it ("0  1" for class "1") reads as a contradiction
        print(f"{'file':<{width}}  {'prediction':<{label_width}}  probability")
    for r in results:
        if "warning" in r:
            print(f"warning: {_name(r)}: {r['warning']}", file=sys.stderr)
        if "error" in r:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        else:
            probability = "-" if r["probability"] is None else f"{r['probability']:.4f}"
            print(f"{_name(r):<{width}}  {r['label']:<{label_width}}  {probability:>11}")


def tag_file_and_say(args: argparse.Namespace) -> None:
    """``--out``: tag the file, then say what was written (``--json``: as one JSON object; nothing more when the
    file went to standard output)."""
    (path,) = args.paths
    done, tags = tag_file(
        args.checkpoint, path, args.out, args.format, args.token_column, args.device, args.allow, args.allow_unverified
    )
    summary = {"file": str(path), "out": str(args.out), "sentences": len(tags), "tokens": sum(map(len, tags))}
    if str(args.out) == "-":
        return
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Wrote {args.out}: {summary['sentences']} sentences, {summary['tokens']} tokens tagged ({done.format})")


@console.closed_pipe_ok
def main(argv: Sequence[str] | None = None) -> None:
    threads.begin()
    parser = argparse.ArgumentParser(
        prog=console.prog("birnn.predict"),
        description="Classify image files (PNG/JPEG), .npy arrays or .ts series with a trained model (or predict "
        "their values, in the target's units, with a task=regression model).",
    )
    parser.add_argument("checkpoint", type=Path, help="a birnn checkpoint, e.g. <run dir>/checkpoints/last.pt")
    parser.add_argument(
        "paths",
        type=Path,
        nargs="*",
        metavar="PATH",
        help="image files, .npy files (one sample each), .ts files (many series each) or folders of them; "
        "for a text model, .txt files (one sample per line)",
    )
    parser.add_argument(
        "--text",
        action="append",
        default=[],
        help="a text to classify or tag (text models; repeatable), split as the model's tokenizer splits raw text: "
        "a word tokenizer takes runs of letters and digits and single punctuation marks (Atlanta's: 3 tokens)",
    )
    parser.add_argument(
        "--tokens",
        action="append",
        default=[],
        metavar="TEXT",
        help="text already split into tokens, on whitespace only (word tokenizers, e.g. a tagger trained on CoNLL "
        'files; repeatable): --tokens "Atlanta\'s jury"',
    )
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    tagging = parser.add_argument_group("tag a file (a tagger trained with data=tagged)")
    tagging.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the one PATH (CoNLL or slash format) with a predicted tag per token: CoNLL gets a new last "
        "column, slash word/TAG tokens; - writes to standard output; an existing file is replaced",
    )
    tagging.add_argument(
        "--format",
        choices=("conll", "slash"),
        help="the file's format (default: conll for a .conll, .conllu or .conllx file, else the model's data.format)",
    )
    tagging.add_argument(
        "--token-column", type=int, metavar="N", help="CoNLL: the token's column, 0-based (default: data.token_column)"
    )
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="make dark-on-light images light-on-dark like the data (default: auto, from the border)",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to run the model (default: cpu)")
    add_trust_options(parser)
    args = parser.parse_intermixed_args(argv)  # PATHs may follow --text
    with stopped_in_one_line("the prediction"), user_errors():
        if not args.paths and not args.text and not args.tokens:
            raise BirnnError("give PATHs to classify, or --text (or --tokens) for a text model")
        if args.out is not None:
            if len(args.paths) != 1 or args.text or args.tokens:
                raise BirnnError("--out tags one file: give exactly one PATH (and no --text or --tokens)")
            tag_file_and_say(args)
            return
        if args.format or args.token_column is not None:
            raise BirnnError("--format and --token-column describe the file that --out tags: give --out FILE")
        is_text = args.text or args.tokens or all(p.suffix.lower() == ".txt" for p in args.paths)
        if is_text:
            restored = text_model(args.checkpoint, args.allow, args.allow_unverified)
            results = predict_texts(restored, args.paths, args.text, args.device, pretokenized=args.tokens)
        else:
            restored = restore(args.checkpoint, allow=args.allow, unverified=args.allow_unverified)
            results = predict(restored, args.paths, args.invert, args.device)
        show(results, args.json)
        if all("error" in r for r in results):
            raise BirnnError(f"no {restored.inputs[0]} could be {restored.target.done}")


if __name__ == "__main__":
    main()
