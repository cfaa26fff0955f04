"""``python -m birnn.predict CKPT PATH [PATH ...] [--json]``: classify image, array or series files with a model, or
predict their values (a model trained with ``task=regression``).

A model trained on text (``data=text``, ``data=tagged``) reads raw text instead: ``--text "..."`` (repeatable) or
``.txt`` files, one sample per line, tokenized with the tokenizer stored in the checkpoint (truncated to
``data.max_length`` like the training texts); a tagger prints each token with its tag. A word tokenizer splits raw
text into runs of letters and digits and single punctuation marks (``Atlanta's`` is ``Atlanta ' s``), which need
not be how a CoNLL file was split: ``--tokens "..."`` (repeatable) takes text already split into tokens, on
whitespace only (word tokenizers).

Each image (PNG or JPEG, any size; a folder stands for the files in it) becomes one input the way the
training data looks: grayscale, area-resized to the data's (steps x features) shape, scaled to [0, 1],
light on dark. Dark-on-light scans are inverted (``--invert auto`` decides from the image border). A
``.npy`` file is one sample ``(steps, features)`` as the data gives it; a ``.ts`` file (the UCR/UEA archive
format) holds many series, each one input whose record carries its ``index``. Inputs are standardized with
the checkpoint's statistics when it was trained with ``data.normalize``, then read k steps at a time when it
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
from birnn.data.patches import patch
from birnn.data.uea import read_series
from birnn.engine.restore import Restored, add_trust_options, restore, user_errors
from birnn.schema import console
from birnn.schema.config import DEVICES, DeviceConfig
from birnn.schema.errors import BirnnError
from birnn.system import threads
from birnn.system.device import setup_device
from birnn.system.files import Unreadable, read_text
from birnn.system.files import lines as text_lines

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SERIES_SUFFIXES = (".ts",)
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
        series = read_series(path, features, restored.normalization)
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


def out_of_range(x: torch.Tensor, restored: Restored) -> str | None:
    """A warning when an input lies far outside what the model saw in training, else None."""
    if restored.normalization:
        z = standardize(x, restored.normalization).abs().max().item()
        return f"values up to {z:.0f} standard deviations from the training mean" if z > FAR else None
    if restored.spec.get("kind", "image") == "image" and (x.min() < -1 or x.max() > 2):
        return f"values in [{x.min():.3g}, {x.max():.3g}], but the model was trained on [0, 1]"
    return None


def predict(
    checkpoint: Path,
    paths: Sequence[Path],
    invert: str = "auto",
    device: str = "cpu",
    allow: Sequence[str] = (),
    unverified: bool = False,
) -> list[dict]:
    """Per input ``{file, prediction, label, probability}`` (series of a ``.ts`` file also ``index``), or
    ``{file, error}`` when a file cannot be read."""
    restored = restore(checkpoint, allow=allow, unverified=unverified)
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
        if restored.normalization:
            inputs = [standardize(x, restored.normalization) for x in inputs]
        inputs = [patch(x[None], restored.patch)[0] for x in inputs]
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


def predict_texts(
    checkpoint: Path,
    paths: Sequence[Path],
    texts: Sequence[str],
    device: str = "cpu",
    allow: Sequence[str] = (),
    unverified: bool = False,
    pretokenized: Sequence[str] = (),
) -> list[dict]:
    """Per text (each ``--text``, each line of each file, each ``pretokenized`` text: tokens split on whitespace
    only) ``{file, index, text, prediction, label, probability}`` (a tagger: ``label`` is ``token/TAG ...``,
    ``tags`` the list), or ``{file, error}`` for an unreadable file."""
    restored = restore(checkpoint, allow=allow, unverified=unverified)
    if restored.tokenizer is None:
        raise BirnnError(f"{checkpoint} was not trained on text (data=text or data=tagged): give files, not --text")
    tok, kind = tokenize.from_json(restored.tokenizer), restored.target
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
    if pretokenized and tok.kind != "word":
        raise BirnnError(f"--tokens gives words: {checkpoint} reads {tok.kind} tokens (use --text)")
    target = setup_device(OmegaConf.structured(DeviceConfig(type=device)))
    model = restored.model.to(target)
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
        split = r["file"] == "--tokens"
        tokens = r["text"].split() if split else tok.split(r["text"]) if kind.per_step else None
        ids = (tok.ids(tokens) or [1]) if kind.per_step or split else tok.encode(r["text"])
        ids = ids if kind.per_step else tok.truncated(ids)
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=target)).float().cpu()
        r.update(kind.answers(model, logits, None if tokens is None else [tokens])[0])
    return records


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
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="make dark-on-light images light-on-dark like the data (default: auto, from the border)",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to run the model (default: cpu)")
    add_trust_options(parser)
    args = parser.parse_intermixed_args(argv)  # PATHs may follow --text
    with user_errors():
        if not args.paths and not args.text and not args.tokens:
            raise BirnnError("give PATHs to classify, or --text (or --tokens) for a text model")
        is_text = args.text or args.tokens or all(p.suffix.lower() == ".txt" for p in args.paths)
        if is_text:
            results = predict_texts(
                args.checkpoint, args.paths, args.text, args.device, args.allow, args.allow_unverified, args.tokens
            )
        else:
            results = predict(args.checkpoint, args.paths, args.invert, args.device, args.allow, args.allow_unverified)
        show(results, args.json)
        if all("error" in r for r in results):
            raise BirnnError("no image could be classified")


if __name__ == "__main__":
    main()
